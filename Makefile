# One command to run, one to test. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test test-services lint serve bench bench-quick bench-workers soak browser fuzz clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# config/development.py leaves a git-ignored .env (DJANGO_DEBUG=1) unless one
# exists, so manage.py commands work in this checkout afterwards.
run: $(STAMP)
	$(PY) -m config.development
	DJANGO_DEBUG=1 $(PY) manage.py migrate --noinput
	DJANGO_DEBUG=1 $(PY) manage.py demo_users
	@echo ""
	@echo "  Page:  http://$(HOST):$(PORT)/"
	@echo "  Admin: http://$(HOST):$(PORT)/admin/  (sign in as operator)"
	@echo "  WebSocket: ws://$(HOST):$(PORT)/ws/"
	@echo ""
	DJANGO_DEBUG=1 $(PY) manage.py runserver $(HOST):$(PORT)

# Chromium for the browser tests (Debian's package; Playwright's download does not work here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and cannot be installed here: browser tests will skip"; fi; }

# Production: uvicorn workers sharing REDIS_URL and DATABASE_URL (docs/deploy.md).
WORKERS ?= 2
serve: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	$(PY) manage.py serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

# Benchmarks: bench/run.py starts each server itself and prints a table
# (median of runs, min-max); JSON in bench/results/latest.json.
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)
	$(PY) bench/churn.py
	$(PY) bench/layers.py

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

# One vs two `manage.py serve` workers on the local PostgreSQL and Redis (docs/deploy.md).
bench-workers: $(STAMP)
	$(PY) bench/workers.py

# Two workers on PostgreSQL and Redis under 10,000 sockets (churn, presence,
# directs) for two minutes, one worker killed, a reconnect storm; PASS/FAIL per
# check (docs/deploy.md). SOAK_ARGS=--quick: 1,000 sockets for 20 s.
SOAK_ARGS ?=
soak: $(STAMP)
	$(PY) bench/soak.py $(SOAK_ARGS)

LINT_PATHS := manage.py config identity tests $(wildcard bench)
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

SERVICES_ENV := DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0

test: $(STAMP) browser lint
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-services

# The suite again on this machine's PostgreSQL and Redis (tests that start
# their own servers on those services already ran above; the wheel's project
# uses neither).
test-services: $(STAMP)
	@if $(PY) -c "import socket; [socket.create_connection(('127.0.0.1', p), 2).close() for p in (5432, 6379)]" 2>/dev/null; then \
	  echo "== the suite on PostgreSQL and Redis =="; \
	  $(SERVICES_ENV) $(PY) -m pytest -m "not browser and not services" -p no:cacheprovider \
	    --ignore=tests/test_wheel.py; \
	elif [ "$(REQUIRE_SERVICES)" = 1 ]; then \
	  echo "REQUIRE_SERVICES=1 but PostgreSQL (5432) or Redis (6379) is not reachable"; exit 1; \
	else echo "skipped: the suite on PostgreSQL and Redis (not reachable on 127.0.0.1)"; fi

# The long fuzz run (tests/fuzz.py): random seed (printed; FUZZ_SEED=N replays it),
# stops after FUZZ_SECONDS and prints the inputs tried. `make test` runs a fixed-seed
# short one (tests/test_fuzz.py).
FUZZ_SECONDS ?= 120
FUZZ_SEED ?=
fuzz: $(STAMP)
	$(PY) -m tests.fuzz --seconds $(FUZZ_SECONDS) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
