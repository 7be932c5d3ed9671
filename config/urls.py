"""URL configuration."""
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from config import views as config_views
from labeling import views as labeling_views

urlpatterns = [
    path("", labeling_views.home, name="home"),
    path("health/", labeling_views.health, name="health"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("labeling/", include("labeling.urls")),
    path("trust/", include("trust.urls")),
    path("api/labeling/", include("labeling.api_urls")),
    path("api/token/", config_views.ObtainTokenView.as_view(), name="api-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # Swagger UI from our own static files (drf-spectacular-sidecar) and its start script from this
    # same URL (?script): nothing inline, nothing from another host, the site's CSP unchanged.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema", template_name="api/swagger_ui.html"),
         name="api-docs"),
]

handler400 = "config.views.bad_request"
handler403 = "config.views.permission_denied"
handler404 = "config.views.not_found"
handler500 = "config.views.server_error"
