"""Any code path that changes a user's standing acts on their open sockets.

Deactivating, deleting or re-passwording a user withdraws their identity;
changing their groups, permissions or staff flags re-checks their topic
subscriptions (identity.realtime).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.dispatch import receiver

from identity import push, registry, withdraw
from identity.models import UserIdentity
from identity.protocol import Reason

logger = logging.getLogger(__name__)

User = get_user_model()
RIGHTS_FIELDS = ("is_staff", "is_superuser")
WATCHED_FIELDS = ("is_active", "password", *RIGHTS_FIELDS)


def stored_fields(model: Any, names: Iterable[str]) -> tuple[str, ...]:
    """Those of NAMES that are columns of MODEL.

    Not hasattr(): a custom user model may make `is_staff` a property (Django's
    documented example does), which values_list() cannot read.
    """
    columns = {field.attname for field in model._meta.concrete_fields}
    return tuple(name for name in names if name in columns)


@receiver(pre_save, sender=User, dispatch_uid="identity-user-pre-save")
def remember_old_state(sender: Any, instance: Any, update_fields: Any = None, **_: Any) -> None:
    """Note the stored `is_active`, password hash and rights, to see what the save changes."""
    instance._identity_before = None
    fields = stored_fields(sender, WATCHED_FIELDS)
    if instance.pk is None or not fields:
        return
    if update_fields is not None and not set(fields) & set(update_fields):
        return
    row = sender.objects.filter(pk=instance.pk).values_list(*fields).first()
    if row is not None:
        instance._identity_before = dict(zip(fields, row, strict=True))


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
    changed = {field for field, old in before.items() if old != getattr(instance, field)}
    if "is_active" in changed and not instance.is_active:
        withdraw.disconnect_on_commit(instance.pk, Reason.USER_INACTIVE, instance.get_username())
    elif "password" in changed:
        withdraw.revoke_tokens(instance.pk)
        withdraw.disconnect_on_commit(instance.pk, Reason.TOKEN_REVOKED, instance.get_username())
    elif changed & set(RIGHTS_FIELDS):
        recheck_on_commit([instance.pk])


@receiver(pre_delete, sender=User, dispatch_uid="identity-user-pre-delete")
def remember_connections(sender: Any, instance: Any, **_: Any) -> None:
    """The user's live sockets and presence topics, before their rows go with them."""
    instance._identity_connections = registry.user_connections(instance.pk)
    instance._identity_topics = registry.user_topics(instance.pk)


@receiver(post_delete, sender=User, dispatch_uid="identity-user-post-delete")
def withdraw_on_delete(sender: Any, instance: Any, **_: Any) -> None:
    """Close the deleted user's sockets with `user_deleted` and push `offline`."""
    connections = getattr(instance, "_identity_connections", [])
    topics = getattr(instance, "_identity_topics", [])
    instance._identity_connections = instance._identity_topics = []
    withdraw.delete_on_commit(instance.pk, instance.get_username(), connections)
    if topics:
        user_id, username = instance.pk, instance.get_username()
        transaction.on_commit(lambda: _leave_all(topics, user_id, username))


def _leave_all(topics: list[str], user_id: int, username: str) -> None:
    """A deleted user's topic rows went with them: push their `leave` for each."""
    for topic in topics:
        try:
            push.push_members_sync(topic, "leave", user_id, username)
        except Exception:
            logger.warning(
                "could not push leave of %s for deleted user %s", topic, user_id, exc_info=True
            )


# --- live re-authorization (PROTOCOL.md v2 rule 2) ------------------------------
# A change to what a user may do re-checks their open subscriptions on every
# process once the change is committed (identity.push.recheck_user).

# A custom user model without PermissionsMixin has neither relation.
USER_GROUPS = getattr(getattr(User, "groups", None), "through", None)
USER_PERMISSIONS = getattr(getattr(User, "user_permissions", None), "through", None)
GROUP_PERMISSIONS = Group.permissions.through
WATCHED_M2M = {m for m in (USER_GROUPS, USER_PERMISSIONS, GROUP_PERMISSIONS) if m is not None}


def recheck_on_commit(user_ids: Iterable[int]) -> None:
    """After the transaction commits, re-check the subscriptions of USER_IDS."""
    ids = sorted(set(user_ids))
    if ids:
        transaction.on_commit(lambda: _recheck(ids))


def _recheck(user_ids: list[int]) -> None:
    for user_id in user_ids:
        try:
            push.recheck_user_sync(user_id)
        except Exception:
            # The change itself is committed; an unreachable layer must not undo
            # the admin's save. Subscriptions stay until the next re-check.
            logger.warning(
                "could not re-check the subscriptions of user %s", user_id, exc_info=True
            )


def _members(group_ids: Iterable[int]) -> list[int]:
    if USER_GROUPS is None:
        return []
    return list(
        User.objects.filter(groups__in=list(group_ids)).distinct().values_list("pk", flat=True)
    )


def _affected(sender: Any, instance: Any, reverse: bool, pk_set: Any) -> list[int]:
    """The users whose rights an m2m change to SENDER touches."""
    if sender is USER_GROUPS or sender is USER_PERMISSIONS:
        return [instance.pk] if not reverse else list(pk_set or ())
    if sender is GROUP_PERMISSIONS:  # group.permissions, or permission.group_set
        return _members([instance.pk] if not reverse else (pk_set or ()))
    return []


@receiver(m2m_changed, dispatch_uid="identity-rights-m2m")
def recheck_on_m2m(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **_: Any
) -> None:
    """Groups or permissions added, removed or cleared: re-check the users touched."""
    if sender not in WATCHED_M2M:
        return
    if action == "pre_clear":
        # After the clear nothing says who was in it: note them now.
        instance._identity_cleared = _affected(
            sender, instance, reverse, _current(sender, instance, reverse)
        )
    elif action == "post_clear":
        recheck_on_commit(getattr(instance, "_identity_cleared", ()))
    elif action in ("post_add", "post_remove"):
        recheck_on_commit(_affected(sender, instance, reverse, pk_set))


def _current(sender: Any, instance: Any, reverse: bool) -> list[int]:
    """The pks on the other side of INSTANCE's relation, before a clear."""
    if sender is USER_GROUPS:
        related = instance.user_set if reverse else instance.groups
    elif sender is USER_PERMISSIONS:
        related = instance.user_set if reverse else instance.user_permissions
    else:
        related = instance.group_set if reverse else instance.permissions
    return list(related.values_list("pk", flat=True))


@receiver(post_save, sender=Group, dispatch_uid="identity-group-saved")
def recheck_group(sender: Any, instance: Any, created: bool, **_: Any) -> None:
    """A group renamed: rules may read its name; re-check its members."""
    if not created:
        recheck_on_commit(_members([instance.pk]))


@receiver(pre_delete, sender=Group, dispatch_uid="identity-group-pre-delete")
def remember_group_members(sender: Any, instance: Any, **_: Any) -> None:
    instance._identity_members = _members([instance.pk])


@receiver(post_delete, sender=Group, dispatch_uid="identity-group-deleted")
def recheck_group_members(sender: Any, instance: Any, **_: Any) -> None:
    """A group deleted: its members lost what it gave them."""
    recheck_on_commit(getattr(instance, "_identity_members", ()))
