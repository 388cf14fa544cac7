"""Every IDENTITY_* setting is read from the environment, over identity.conf's defaults."""

from __future__ import annotations

import subprocess
import sys

from identity import conf
from tests.servers import ROOT, base_env

SHOW = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.IDENTITY_WITHDRAWAL_POLL, s.IDENTITY_AUTH_TIMEOUT, s.IDENTITY_LOGIN_RATE_PER_ACCOUNT, "
    "s.IDENTITY_HANDSHAKE_TIMEOUT)"
)


def settings_seen(**env: str) -> list[str]:
    environment = base_env(**env)
    for name in [*conf.DEFAULTS, *conf.RATE_DEFAULTS]:
        if name not in env:
            environment.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", SHOW], cwd=ROOT, env=environment, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_each_identity_variable_of_the_environment_is_read():
    seen = settings_seen(
        IDENTITY_WITHDRAWAL_POLL="0.5",
        IDENTITY_AUTH_TIMEOUT="7",
        IDENTITY_LOGIN_RATE_PER_ACCOUNT="3/min",
        IDENTITY_HANDSHAKE_TIMEOUT="4",
    )
    assert seen == ["0.5", "7.0", "3/min", "4.0"]


def test_unset_variables_take_the_defaults_identity_conf_owns():
    assert settings_seen() == [
        str(conf.DEFAULTS["IDENTITY_WITHDRAWAL_POLL"]),
        str(conf.DEFAULTS["IDENTITY_AUTH_TIMEOUT"]),
        conf.RATE_DEFAULTS["IDENTITY_LOGIN_RATE_PER_ACCOUNT"],
        str(conf.DEFAULTS["IDENTITY_HANDSHAKE_TIMEOUT"]),
    ]
