"""Create the bench users in the project's database and mint their tokens.

Run by `bench/run.py` with the bench environment (`DJANGO_SETTINGS_MODULE`,
`DATABASE_URL` pointing at the bench SQLite file, the bench secret key), after
`manage.py migrate`. Writes the credentials file the load generator reads:
`{"users": [{"id", "username", "token"}, ...]}`.

Usage: `python bench/project_users.py --count 1101 --out FILE`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USERNAME_FORMAT = "bench{:05d}"


def main(argv: list[str] | None = None) -> int:
    """Create (or reuse) the users and write one access token each."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.tokens import AccessToken

    user_model = get_user_model()
    names = [USERNAME_FORMAT.format(i) for i in range(args.count)]
    existing = set(user_model.objects.filter(username__in=names).values_list("username", flat=True))
    new = []
    for name in names:
        if name not in existing:
            user = user_model(username=name, is_active=True)
            # No password: bench users only ever hold minted tokens.
            user.set_unusable_password()
            new.append(user)
    user_model.objects.bulk_create(new, batch_size=500)
    users = user_model.objects.filter(username__in=names).order_by("username")
    rows = [
        {"id": u.pk, "username": u.get_username(), "token": str(AccessToken.for_user(u))}
        for u in users
    ]
    Path(args.out).write_text(json.dumps({"users": rows}), encoding="utf-8")
    print(f"{len(rows)} bench users ({len(new)} new), tokens in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
