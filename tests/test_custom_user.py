"""A custom user model whose flags are properties, as in Django's documented example."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, models
from django.db.models.signals import post_save, pre_save
from django.test.utils import isolate_apps

from identity import signals

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_flag_user() -> Iterator[Any]:
    """A user of Django's custom-user example: an `is_admin` field, `is_staff` its property.

    Its table exists for the test; identity's receivers of user saves listen to
    its saves (once it exists: a new user's lock row is for Django's user).
    """
    with isolate_apps("identity"):

        class AdminFlagUser(AbstractBaseUser):
            email = models.EmailField(unique=True)
            is_active = models.BooleanField(default=True)
            is_admin = models.BooleanField(default=False)

            USERNAME_FIELD = "email"

            class Meta:
                app_label = "identity"

            @property
            def is_staff(self) -> bool:
                return self.is_admin

        with connection.schema_editor() as editor:
            editor.create_model(AdminFlagUser)
        user = AdminFlagUser.objects.create(email="ada@example.com")
        pre_save.connect(signals.remember_old_state, sender=AdminFlagUser)
        post_save.connect(signals.withdraw_on_change, sender=AdminFlagUser)
        try:
            yield user
        finally:
            pre_save.disconnect(signals.remember_old_state, sender=AdminFlagUser)
            post_save.disconnect(signals.withdraw_on_change, sender=AdminFlagUser)
            with connection.schema_editor() as editor:
                editor.delete_model(AdminFlagUser)


def test_a_user_whose_is_staff_is_a_property_can_be_saved(admin_flag_user, monkeypatch):
    rechecked: list[Any] = []
    monkeypatch.setattr(signals, "recheck_on_commit", rechecked.append)
    admin_flag_user.is_admin = True  # is_staff follows, but it is no column
    admin_flag_user.email = "ada@example.org"
    admin_flag_user.save()
    assert type(admin_flag_user).objects.get().email == "ada@example.org"
    assert rechecked == []


def test_only_stored_fields_are_compared_never_a_property():
    user_model = get_user_model()
    assert isinstance(user_model.is_anonymous, property)  # a real property of the model
    fields = signals.stored_fields(user_model, ("is_active", "is_anonymous", "is_staff"))
    assert fields == ("is_active", "is_staff")
