"""Withdrawing identities: revoke tokens, kick, and react to user changes.

Sync functions for views, signals, the admin and commands. Sockets are told
only after the database change commits, so a socket's own cleanup never races
the change that closed it (and presence is pushed exactly once).
"""

from __future__ import annotations

import logging
import time

from django.db import transaction
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from identity import push
from identity.layers import LayerUnavailable
from identity.models import UserIdentity
from identity.protocol import Reason

logger = logging.getLogger(__name__)


def revoke_tokens(user_id: int) -> None:
    """Refuse every token issued to the user so far; blacklist their refresh tokens."""
    with transaction.atomic():
        UserIdentity.objects.update_or_create(
            user_id=user_id, defaults={"tokens_revoked_at": int(time.time())}
        )
        outstanding = OutstandingToken.objects.filter(user_id=user_id).exclude(
            blacklistedtoken__isnull=False
        )
        BlacklistedToken.objects.bulk_create(
            [BlacklistedToken(token=token) for token in outstanding], ignore_conflicts=True
        )


def disconnect(user_id: int, reason: Reason) -> int:
    """Close the user's sockets with REASON; the number of sockets.

    Raises LayerUnreachable when they live in a process this one cannot reach.
    """
    return push.disconnect_user_sync(user_id, reason)


def revoke(user_id: int) -> int:
    """Revoke the user's tokens and close their sockets; the number of sockets."""
    revoke_tokens(user_id)
    return disconnect(user_id, Reason.TOKEN_REVOKED)


def disconnect_on_commit(user_id: int, reason: Reason) -> None:
    """Close the user's sockets once the current transaction commits (signals)."""
    transaction.on_commit(lambda: disconnect_logged(user_id, reason))


def disconnect_logged(user_id: int, reason: Reason) -> None:
    try:
        disconnect(user_id, reason)
    except (push.LayerUnreachable, LayerUnavailable) as exc:
        logger.warning("user %s: sockets not closed: %s", user_id, exc)
    except Exception:
        logger.exception("user %s: could not close sockets", user_id)
