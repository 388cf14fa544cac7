"""The Django admin as the operator's console: who is connected, and make them go.

Laid out for the operator's questions: who is online, how many sockets, since
when, from where. The user list shows online state, live socket count and the
oldest live socket's opening (filterable, sortable); a user's page starts with
their live connections, each with a Close button; the actions "Disconnect" and
"Revoke tokens" act on selected users. Deactivating or deleting a user in the
admin drops their sockets through identity.signals, like any other save or
delete; each of these says what it did and how many sockets closed. The
dashboard (identity.dashboard) is linked from the admin index.

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
from django.db.models import Count, Min, Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from identity import registry, times, withdraw
from identity.layers import LayerUnavailable
from identity.models import Connection, ServerProcess
from identity.protocol import Reason

User = get_user_model()


def _live_filter() -> Q:
    return registry.live("identity_connections__")


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
        modeladmin,
        request,
        queryset,
        lambda user: withdraw.revoke(user.pk, user.get_username()),
        withdraw.revoked,
        "Tokens of {} revoked; ",
    )


def _withdraw_each(
    modeladmin: Any,
    request: HttpRequest,
    queryset: QuerySet,
    act: Any,
    say: Any = withdraw.outcome,
    done_anyway: str = "",
) -> None:
    """Withdraw each selected user, with one message each saying what happened.

    DONE_ANYWAY names what was done even when closing the sockets failed.
    """
    with withdraw.acting_as(_actor(request)):
        for user in queryset:
            username = user.get_username()
            try:
                closed = act(user)
            except LayerUnavailable as exc:
                text = done_anyway.format(username) + withdraw.failure(username, exc)
                modeladmin.message_user(request, text, messages.ERROR)
            else:
                modeladmin.message_user(request, _said(say(username, closed)), messages.SUCCESS)


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

    # The operator's questions first; names and email stay searchable
    # (search_fields) without taking the width of the list.
    list_display = ["username", "online", "live_sockets", "online_since", "is_active", "is_staff"]
    list_filter = [OnlineFilter, *DjangoUserAdmin.list_filter]
    actions = [disconnect_users, revoke_users]
    readonly_fields = ["live_connections"]

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        for model in DELETED_WITH_THE_USER:
            perms_needed.discard(str(model._meta.verbose_name))
        return deleted, counts, perms_needed, protected

    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        # A deactivation closes the sockets in identity.signals once the save
        # commits (the one path for every caller, so nothing closes twice);
        # `_reporting` turns its count into "alice was deactivated; 2 sockets closed".
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
        # First: what the operator came for. A read-only table, not an inline:
        # an inline formset would post the connections back, and they may be
        # gone by the time the form saves.
        return [("Live connections", {"fields": ["live_connections"]}), *fieldsets]

    @admin.display(description="connections")
    def live_connections(self, obj: Any) -> str:
        # The change page is one <form>: each Close button posts it (with its
        # CSRF token) to the close view instead (formaction), which reads
        # nothing else from it.
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td>"
            '<td title="{}">{}</td><td>{}</td>'
            '<td><button type="submit" class="button" formaction="{}" formmethod="post" '
            'formnovalidate name="_close_connection">Close</button></td></tr>',
            (
                (
                    times.when(conn.opened_at),
                    times.when(conn.server.heartbeat_at),
                    conn.remote_addr or "?",
                    conn.user_agent,
                    short_agent(conn.user_agent),
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
        return format_html('<table id="live-connections">{}{}</table>', head, rows)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .annotate(
                live_sockets=Count("identity_connections", filter=_live_filter()),
                online_since=Min("identity_connections__opened_at", filter=_live_filter()),
            )
        )

    @admin.display(boolean=True, description="online", ordering="live_sockets")
    def online(self, obj: Any) -> bool:
        return obj.live_sockets > 0

    @admin.display(description="sockets", ordering="live_sockets")
    def live_sockets(self, obj: Any) -> int:
        return obj.live_sockets

    @admin.display(description="online since", ordering="online_since")
    def online_since(self, obj: Any) -> Any:
        """When the user's oldest live socket opened."""
        return times.when(obj.online_since) if obj.online_since else ""

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
                "opened": times.when(connection.opened_at),
                "last_seen": times.when(connection.server.heartbeat_at),
                "user_url": user_url,
                "opts": self.model._meta,
            }
            return TemplateResponse(request, "admin/identity/close_connection.html", context)
        username = connection.user.get_username()
        with withdraw.acting_as(_actor(request)):
            try:
                closed = withdraw.kick_connection(channel, user_id, username)
            except LayerUnavailable as exc:
                self.message_user(request, withdraw.failure(username, exc), messages.ERROR)
            else:
                level = messages.SUCCESS if closed else messages.WARNING
                self.message_user(request, f"{_one_socket(username, closed)}.", level)
        return HttpResponseRedirect(user_url)


# (marker, name) in the order to look for them: Edge and Chrome also say "Safari".
BROWSERS = [
    ("Edg/", "Edge"),
    ("Firefox/", "Firefox"),
    ("Chrome/", "Chrome"),
    ("Version/", "Safari"),
]
SYSTEMS = [("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iOS"), ("Windows", "Windows"),
           ("Mac OS X", "macOS"), ("Linux", "Linux")]  # fmt: skip
AGENT_WIDTH = 40  # characters of an unrecognised user agent shown


def short_agent(agent: str) -> str:
    """A user agent in a few words ("Chrome 131 on Linux"); the full string is in the title."""
    if not agent:
        return "?"
    for marker, name in BROWSERS:
        if marker in agent and "Mozilla/" in agent:
            version = agent.split(marker, 1)[1].split(".", 1)[0].split(" ", 1)[0]
            system = next((os_name for key, os_name in SYSTEMS if key in agent), "")
            return f"{name} {version}" + (f" on {system}" if system else "")
    return agent if len(agent) <= AGENT_WIDTH else agent[: AGENT_WIDTH - 1] + "…"


def _one_socket(username: str, closed: int) -> str:
    if closed:
        return withdraw.outcome(username, closed)
    return f"nothing closed: that socket of {username} had already gone"


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    """Every live connection, across processes."""

    list_display = ["user", "opened", "last_seen", "remote_addr", "agent", "server", "close"]
    # A list only: there is nothing to edit on a connection, and Django's
    # read-only page would offer a "Close" that only goes back.
    list_display_links = None
    list_filter = ["server"]
    search_fields = ["user__username", "remote_addr"]
    actions = ["close_connections"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return registry.live_connections().select_related("user", "server")

    def change_view(self, request: HttpRequest, object_id: str, *args: Any, **kwargs: Any) -> Any:
        """The confirmation page that really closes the connection."""
        connection = get_object_or_404(self.get_queryset(request), pk=object_id)
        return HttpResponseRedirect(
            reverse(
                "admin:identity_close_connection",
                args=[connection.user_id, connection.channel_name],
            )
        )

    @admin.display(description="opened", ordering="opened_at")
    def opened(self, obj: Connection) -> Any:
        return times.when(obj.opened_at)

    @admin.display(description="user agent", ordering="user_agent")
    def agent(self, obj: Connection) -> Any:
        return format_html(
            '<span title="{}">{}</span>', obj.user_agent, short_agent(obj.user_agent)
        )

    @admin.display(description="")
    def close(self, obj: Connection) -> Any:
        url = reverse("admin:identity_close_connection", args=[obj.user_id, obj.channel_name])
        return format_html('<a class="button" href="{}">Close…</a>', url)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A bare row delete would leave its socket open and unlisted: "Close" instead.
        return False

    @admin.display(description="last seen", ordering="server__heartbeat_at")
    def last_seen(self, obj: Connection) -> Any:
        return times.when(obj.server.heartbeat_at)

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
                except LayerUnavailable as exc:
                    self.message_user(request, withdraw.failure(username, exc), messages.ERROR)
        for username, count in closed.items():
            self.message_user(request, _said(withdraw.outcome(username, count)), messages.SUCCESS)


@admin.register(ServerProcess)
class ServerProcessAdmin(admin.ModelAdmin):
    """Server processes and their heartbeats."""

    list_display = ["id", "state", "heartbeat", "started", "socket_count"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(socket_count=Count("connections"))

    @admin.display(description="state")
    def state(self, obj: ServerProcess) -> str:
        if obj.heartbeat_at <= registry.RETIRED:
            return "stopped"
        return "live" if obj.heartbeat_at >= registry.live_cutoff() else "stale"

    @admin.display(description="heartbeat", ordering="heartbeat_at")
    def heartbeat(self, obj: ServerProcess) -> Any:
        return "stopped" if obj.heartbeat_at <= registry.RETIRED else times.when(obj.heartbeat_at)

    @admin.display(description="started", ordering="started_at")
    def started(self, obj: ServerProcess) -> Any:
        return times.when(obj.started_at)

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
