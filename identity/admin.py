"""The Django admin as the operator's console: who is connected, and make them go.

The user list shows online state and live socket count (filterable); a user's
page lists their live connections with a button to close each; the actions
"Disconnect" and "Revoke tokens" act on selected users. Deactivating or deleting
a user in the admin drops their sockets through identity.signals, like any
other save or delete; each of these says how many sockets closed.

Registry rows are never deleted here on their own: a row deleted without its
socket being told would leave the socket open and unlisted. A user's rows go
with the user (their sockets are closed by the delete), and a dead server
process's rows are purged by the next heartbeat of a living one, so server
processes cannot be deleted by hand either.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from identity import registry, withdraw
from identity.models import Connection, ServerProcess
from identity.protocol import Reason

User = get_user_model()


def _live_filter() -> Q:
    return Q(identity_connections__server__heartbeat_at__gte=registry.live_cutoff())


class OnlineFilter(admin.SimpleListFilter):
    """Filter the user list by whether the user has a live socket."""

    title = "online"
    parameter_name = "online"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Online"), ("no", "Offline")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(live_sockets__gt=0)
        if self.value() == "no":
            return queryset.filter(live_sockets=0)
        return queryset


# permissions=["change"]: without it Django offers actions to anyone who may
# view the list; the staff API asks for the same permission (identity/api.py).
@admin.action(description="Disconnect selected users (close their sockets)", permissions=["change"])
def disconnect_users(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    _withdraw_each(
        modeladmin,
        request,
        queryset,
        lambda user: withdraw.disconnect(user.pk, Reason.KICKED, user.get_username()),
    )


@admin.action(
    description="Revoke tokens of selected users (and close their sockets)", permissions=["change"]
)
def revoke_users(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    _withdraw_each(
        modeladmin, request, queryset, lambda user: withdraw.revoke(user.pk, user.get_username())
    )


def _withdraw_each(modeladmin: Any, request: HttpRequest, queryset: QuerySet, act: Any) -> None:
    """Withdraw each selected user, with one message each saying what happened."""
    with withdraw.acting_as(_actor(request)):
        for user in queryset:
            try:
                closed = act(user)
            except withdraw.Unreached as exc:
                modeladmin.message_user(
                    request, withdraw.failure(user.get_username(), exc), messages.ERROR
                )
            else:
                text = _said(withdraw.outcome(user.get_username(), closed))
                modeladmin.message_user(request, text, messages.SUCCESS)


def _said(text: str) -> str:
    """An outcome as an admin message, which capitalises its first letter: not a username's."""
    return f"{text}." if text[:1].isupper() or not text[:1].isalpha() else f"User {text}."


def _actor(request: HttpRequest) -> str:
    return f"admin {request.user.get_username()}"


def _reporting(modeladmin: Any, request: HttpRequest) -> Any:
    """Name the admin user as the actor; withdrawals by signals become messages."""

    def report(succeeded: bool, text: str) -> None:
        level = messages.SUCCESS if succeeded else messages.ERROR
        modeladmin.message_user(request, _said(text) if succeeded else text, level)

    return withdraw.acting_as(_actor(request), report)


# What deleting a user deletes with it that its own admin forbids deleting alone:
# their registry rows (the delete closes those sockets: identity.signals) and
# their JWTs (SimpleJWT's admin is read-only). Not a reason to refuse the delete.
DELETED_WITH_THE_USER = {Connection, OutstandingToken, BlacklistedToken}


admin.site.unregister(User)


@admin.register(User)
class IdentityUserAdmin(DjangoUserAdmin):
    """Django's user admin plus online state, live sockets and withdrawal actions."""

    list_display = [*DjangoUserAdmin.list_display, "is_active", "online", "live_sockets"]
    list_filter = [OnlineFilter, *DjangoUserAdmin.list_filter]
    actions = [disconnect_users, revoke_users]
    readonly_fields = ["live_connections"]

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for model in DELETED_WITH_THE_USER:
            perms_needed.discard(model._meta.verbose_name)
        return deleted, counts, perms_needed, protected

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        with _reporting(self, request):
            return super().changeform_view(request, *args, **kwargs)

    def delete_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        with _reporting(self, request):
            return super().delete_view(request, *args, **kwargs)

    def changelist_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        # Also the bulk "Delete selected users", which runs as an action here.
        with _reporting(self, request):
            return super().changelist_view(request, *args, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            return fieldsets
        # A read-only table, not an inline: an inline formset would post the
        # connections back, and they may be gone by the time the form saves.
        return [*fieldsets, ("Live connections", {"fields": ["live_connections"]})]

    @admin.display(description="connections")
    def live_connections(self, obj: Any) -> str:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            '<td><a class="button" href="{}">Close</a></td></tr>',
            (
                (
                    conn.opened_at,
                    conn.server.heartbeat_at,
                    conn.remote_addr or "?",
                    conn.user_agent or "?",
                    conn.server_id,
                    reverse("admin:identity_close_connection", args=[obj.pk, conn.channel_name]),
                )
                for conn in registry.user_connections(obj.pk)
            ),
        )
        if not rows:
            return "No live connection."
        head = format_html(
            "<tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th></tr>",
            "opened", "last seen", "remote address", "user agent", "server process",
        )  # fmt: skip
        return format_html("<table>{}{}</table>", head, rows)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(live_sockets=Count("identity_connections", filter=_live_filter()))
        )

    @admin.display(boolean=True, description="online", ordering="live_sockets")
    def online(self, obj: Any) -> bool:
        return obj.live_sockets > 0

    @admin.display(description="sockets", ordering="live_sockets")
    def live_sockets(self, obj: Any) -> int:
        return obj.live_sockets

    def get_urls(self) -> list[Any]:
        close = self.admin_site.admin_view(self.close_connection_view)
        return [
            path(
                "<int:user_id>/connections/<str:channel>/close/",
                close,
                name="identity_close_connection",
            ),
            *super().get_urls(),
        ]

    def close_connection_view(self, request: HttpRequest, user_id: int, channel: str) -> Any:
        """Confirm (GET) and close (POST) one live connection of a user."""
        if not self.has_change_permission(request):
            return HttpResponse("Forbidden", status=403)
        connection = get_object_or_404(
            registry.live_connections().select_related("server", "user"),
            user_id=user_id,
            channel_name=channel,
        )
        user_url = reverse("admin:auth_user_change", args=[user_id])
        if request.method != "POST":
            context = {
                **self.admin_site.each_context(request),
                "title": "Close this connection?",
                "connection": connection,
                "user_url": user_url,
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "admin/identity/close_connection.html", context)
        username = connection.user.get_username()
        with withdraw.acting_as(_actor(request)):
            try:
                closed = withdraw.kick_connection(channel, user_id, username)
            except withdraw.Unreached as exc:
                self.message_user(request, withdraw.failure(username, exc), messages.ERROR)
            else:
                level = messages.SUCCESS if closed else messages.WARNING
                self.message_user(request, f"{_one_socket(username, closed)}.", level)
        return HttpResponseRedirect(user_url)


def _one_socket(username: str, closed: int) -> str:
    if closed:
        return withdraw.outcome(username, closed)
    return f"nothing closed: that socket of {username} had already gone"


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    """Every live connection, across processes."""

    list_display = ["user", "opened_at", "last_seen", "remote_addr", "user_agent", "server"]
    list_filter = ["server"]
    search_fields = ["user__username", "remote_addr"]
    actions = ["close_connections"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return registry.live_connections().select_related("user", "server")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A bare row delete would leave its socket open and unlisted: "Close" instead.
        return False

    @admin.display(description="last seen")
    def last_seen(self, obj: Connection) -> Any:
        return obj.server.heartbeat_at

    @admin.action(description="Close selected connections")
    def close_connections(self, request: HttpRequest, queryset: QuerySet) -> None:
        closed: Counter[str] = Counter()
        with withdraw.acting_as(_actor(request)):
            for connection in queryset:
                username = connection.user.get_username()
                try:
                    closed[username] += withdraw.kick_connection(
                        connection.channel_name, connection.user_id, username
                    )
                except withdraw.Unreached as exc:
                    self.message_user(request, withdraw.failure(username, exc), messages.ERROR)
        for username, count in closed.items():
            self.message_user(request, _said(withdraw.outcome(username, count)), messages.SUCCESS)


@admin.register(ServerProcess)
class ServerProcessAdmin(admin.ModelAdmin):
    """Server processes and their heartbeats."""

    list_display = ["id", "started_at", "heartbeat_at", "socket_count"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(socket_count=Count("connections"))

    @admin.display(description="sockets")
    def socket_count(self, obj: Any) -> int:
        return obj.socket_count

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A live process cannot be deleted (its sockets would stay open, unlisted);
        # a dead one's rows are purged by the next heartbeat of a living process.
        return False
