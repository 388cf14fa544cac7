"""The Django admin as the operator's console: who is connected, and make them go.

The user list shows online state and live socket count (filterable); a user's
page lists their live connections with a button to close each; the actions
"Disconnect" and "Revoke tokens" act on selected users. Deactivating a user in
the admin drops their sockets through identity.signals, like any other save.
"""

from __future__ import annotations

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

from identity import push, registry, withdraw
from identity.layers import LayerUnavailable
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
    _withdraw_each(modeladmin, request, queryset, lambda pk: withdraw.disconnect(pk, Reason.KICKED))


@admin.action(
    description="Revoke tokens of selected users (and close their sockets)", permissions=["change"]
)
def revoke_users(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    _withdraw_each(modeladmin, request, queryset, withdraw.revoke)


def _withdraw_each(modeladmin: Any, request: HttpRequest, queryset: QuerySet, act: Any) -> None:
    closed, unreachable = 0, []
    users = list(queryset)
    for user in users:
        try:
            closed += act(user.pk)
        except (push.LayerUnreachable, LayerUnavailable) as exc:
            unreachable.append(f"{user.get_username()}: {exc}")
    modeladmin.message_user(
        request, f"{closed} socket(s) closed for {len(users)} user(s).", messages.SUCCESS
    )
    for problem in unreachable:
        modeladmin.message_user(request, problem, messages.ERROR)


admin.site.unregister(User)


@admin.register(User)
class IdentityUserAdmin(DjangoUserAdmin):
    """Django's user admin plus online state, live sockets and withdrawal actions."""

    list_display = [*DjangoUserAdmin.list_display, "is_active", "online", "live_sockets"]
    list_filter = [OnlineFilter, *DjangoUserAdmin.list_filter]
    actions = [disconnect_users, revoke_users]
    readonly_fields = ["live_connections"]

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
        if not push.connection_is_local(channel):
            self.message_user(
                request,
                "That socket is held by another server process, which the in-memory "
                "channel layer cannot reach; set REDIS_URL.",
                messages.ERROR,
            )
        else:
            push.disconnect_connection_sync(channel, Reason.KICKED)
            self.message_user(request, "1 socket closed.", messages.SUCCESS)
        return HttpResponseRedirect(user_url)


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
        return False

    @admin.display(description="last seen")
    def last_seen(self, obj: Connection) -> Any:
        return obj.server.heartbeat_at

    @admin.action(description="Close selected connections")
    def close_connections(self, request: HttpRequest, queryset: QuerySet) -> None:
        closed = 0
        for connection in queryset:
            if push.connection_is_local(connection.channel_name):
                push.disconnect_connection_sync(connection.channel_name, Reason.KICKED)
                closed += 1
        self.message_user(request, f"{closed} socket(s) closed.", messages.SUCCESS)
        if closed < len(queryset):
            self.message_user(
                request,
                f"{len(queryset) - closed} socket(s) are held by another server process, "
                "which the in-memory channel layer cannot reach; set REDIS_URL.",
                messages.ERROR,
            )


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
