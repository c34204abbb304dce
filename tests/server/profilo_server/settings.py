"""Settings of the profilo-gateway test server.

Configured like the production Profilometre API (DRF + SimpleJWT with rotation and
blacklisting), with lifetimes short enough for tests. Everything that a test may
want to change comes from the environment:

PROFILO_DB_PATH                SQLite file (default: ./db.sqlite3 beside manage.py)
PROFILO_ACCESS_LIFETIME_SECS   access token lifetime, seconds (default 3)
PROFILO_REFRESH_LIFETIME_SECS  refresh token lifetime, seconds (default 3600)
PROFILO_TEST_CONTROL           "1" enables the unauthenticated /test-control/ endpoints
"""
import os
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def _float_env(name, default):
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


SECRET_KEY = os.environ.get(
    "PROFILO_SECRET_KEY", "test-only-secret-key-not-for-production-0123456789abcdef"
)
DEBUG = False
ALLOWED_HOSTS = ["*"]

TEST_CONTROL_ENABLED = os.environ.get("PROFILO_TEST_CONTROL") == "1"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "readings",
]

MIDDLEWARE = [
    "readings.middleware.StatsMiddleware",
    "readings.misbehave.MisbehaveMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "profilo_server.urls"
WSGI_APPLICATION = "profilo_server.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("PROFILO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {
            # Several gunicorn threads write (readings, counters, tokens): wait for the
            # lock rather than fail, and take it at BEGIN so upgrades cannot deadlock.
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}

AUTH_PASSWORD_VALIDATORS = []
# Tests create users often: a fast hasher keeps logins and user creation cheap.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": (
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ),
    "DEFAULT_PERMISSION_CLASSES": ("rest_framework.permissions.IsAuthenticated",),
    "DEFAULT_RENDERER_CLASSES": ("rest_framework.renderers.JSONRenderer",),
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=_float_env("PROFILO_ACCESS_LIFETIME_SECS", 3)),
    "REFRESH_TOKEN_LIFETIME": timedelta(
        seconds=_float_env("PROFILO_REFRESH_LIFETIME_SECS", 3600)
    ),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": False,
    "ALGORITHM": "HS256",
    "AUTH_HEADER_TYPES": ("Bearer",),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
