"""The endpoints of shared/API.md, plus /test-control/ when PROFILO_TEST_CONTROL=1."""
from django.conf import settings
from django.urls import include, path
from rest_framework_simplejwt.views import (
    TokenObtainPairView,
    TokenRefreshView,
    TokenVerifyView,
)

from readings import views

urlpatterns = [
    path("api/token/", TokenObtainPairView.as_view(), name="token_obtain_pair"),
    path("api/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    path("api/token/verify/", TokenVerifyView.as_view(), name="token_verify"),
    path("api/auth/profile/", views.ProfileView.as_view(), name="profile"),
    path("api/send/data/", views.SendDataView.as_view(), name="send_data"),
]

if settings.TEST_CONTROL_ENABLED:
    urlpatterns.append(path("test-control/", include("readings.control_urls")))
