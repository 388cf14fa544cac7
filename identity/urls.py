"""identity's HTTP routes, for a project's ROOT_URLCONF.

    from django.contrib import admin
    from django.urls import include, path

    from identity.urls import admin_urlpatterns

    urlpatterns = [
        # Before the admin's own URLs: its catch-all would answer these with 404.
        path("admin/", include(admin_urlpatterns)),
        path("admin/", admin.site.urls),
        # At the root: the page's client, the JSON error pages and load
        # balancers expect /api/, /healthz and the page there.
        path("", include("identity.urls")),
    ]

`urlpatterns` is the page, the token API, the staff API, the health check and
the operators' metrics;
`admin_urlpatterns` is the operator's dashboard, mounted where the admin is.
"""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from rest_framework_simplejwt.views import TokenBlacklistView, TokenRefreshView

from identity import api, dashboard, metrics_api, views

urlpatterns = [
    path("", views.index, name="index"),
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
    path("metrics", metrics_api.MetricsView.as_view(), name="metrics"),
]

admin_urlpatterns = [
    path(
        "identity/dashboard/",
        admin.site.admin_view(dashboard.page),
        name="identity_dashboard",
    ),
    path(
        "identity/dashboard/data/",
        admin.site.admin_view(dashboard.data),
        name="identity_dashboard_data",
    ),
]
