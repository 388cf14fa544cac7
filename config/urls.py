"""HTTP routes: the page, the admin, the token and staff API, the health check."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from rest_framework_simplejwt.views import TokenBlacklistView, TokenRefreshView

from identity import api, dashboard, views

urlpatterns = [
    path("", views.index, name="index"),
    path(
        "admin/identity/dashboard/",
        admin.site.admin_view(dashboard.page),
        name="identity_dashboard",
    ),
    path(
        "admin/identity/dashboard/data/",
        admin.site.admin_view(dashboard.data),
        name="identity_dashboard_data",
    ),
    path("admin/", admin.site.urls),
    path("api/token/", api.SignInView.as_view(), name="token_obtain_pair"),
    path("api/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    path("api/token/blacklist/", TokenBlacklistView.as_view(), name="token_blacklist"),
    path("api/online/", api.OnlineView.as_view(), name="api_online"),
    path(
        "api/users/<str:username>/disconnect/",
        api.DisconnectView.as_view(),
        name="api_disconnect",
    ),
    path("api/users/<str:username>/revoke/", api.RevokeView.as_view(), name="api_revoke"),
    path("healthz", api.healthz, name="healthz"),
]

handler400 = "identity.views.bad_request"
handler404 = "identity.views.not_found"
handler500 = "identity.views.server_error"
