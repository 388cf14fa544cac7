"""Any code path that deactivates, deletes or re-passwords a user withdraws their identity."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver

from identity import registry, withdraw
from identity.models import UserIdentity
from identity.protocol import Reason

User = get_user_model()
WATCHED_FIELDS = {"is_active", "password"}


@receiver(pre_save, sender=User, dispatch_uid="identity-user-pre-save")
def remember_old_state(sender: Any, instance: Any, update_fields: Any = None, **_: Any) -> None:
    """Note the stored `is_active` and password hash, to see what the save changes."""
    instance._identity_before = None
    if instance.pk is None or (
        update_fields is not None and not WATCHED_FIELDS & set(update_fields)
    ):
        return
    instance._identity_before = (
        sender.objects.filter(pk=instance.pk).values_list("is_active", "password").first()
    )


@receiver(post_save, sender=User, dispatch_uid="identity-user-post-save")
def withdraw_on_change(sender: Any, instance: Any, created: bool, **_: Any) -> None:
    """Deactivation closes with `user_inactive`; a new password revokes tokens."""
    before = getattr(instance, "_identity_before", None)
    instance._identity_before = None
    if created:
        # The per-user lock row, so the first `auth` need not create it.
        UserIdentity.objects.get_or_create(user_id=instance.pk)
        return
    if before is None:
        return
    was_active, old_password = before
    if was_active and not instance.is_active:
        withdraw.disconnect_on_commit(instance.pk, Reason.USER_INACTIVE, instance.get_username())
    elif old_password != instance.password:
        withdraw.revoke_tokens(instance.pk)
        withdraw.disconnect_on_commit(instance.pk, Reason.TOKEN_REVOKED, instance.get_username())


@receiver(pre_delete, sender=User, dispatch_uid="identity-user-pre-delete")
def remember_connections(sender: Any, instance: Any, **_: Any) -> None:
    """The user's live sockets, before their registry rows go with them."""
    instance._identity_connections = registry.user_connections(instance.pk)


@receiver(post_delete, sender=User, dispatch_uid="identity-user-post-delete")
def withdraw_on_delete(sender: Any, instance: Any, **_: Any) -> None:
    """Close the deleted user's sockets with `user_deleted` and push `offline`."""
    connections = getattr(instance, "_identity_connections", [])
    instance._identity_connections = []
    withdraw.delete_on_commit(instance.pk, instance.get_username(), connections)
