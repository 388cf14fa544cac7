"""HTTP routes: the page, the admin, the token and staff API, the health check (identity.urls)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from identity.urls import admin_urlpatterns

urlpatterns = [
    # The dashboard before the admin's own URLs: its catch-all would take them.
    path("admin/", include(admin_urlpatterns)),
    path("admin/", admin.site.urls),
    path("", include("identity.urls")),
]

# JSON instead of HTML error pages under /api/ and /healthz (identity.views).
handler400 = "identity.views.bad_request"
handler404 = "identity.views.not_found"
handler500 = "identity.views.server_error"
