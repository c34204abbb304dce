"""TEST-ONLY control endpoints, mounted under /test-control/ when PROFILO_TEST_CONTROL=1.

No authentication: never enable them on a server that anything but a test can reach.
"""
from django.contrib.auth import get_user_model
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from .misbehave import MODES, SCOPES
from .models import Counter, Faults, Reading
from .serializers import ReadingSerializer

# Always present in /test-control/stats/, zero until counted.
STAT_NAMES = [
    "requests_total",
    "login_ok",
    "login_failed",
    "refresh_ok",
    "refresh_failed",
    "verify_ok",
    "verify_failed",
    "profile_ok",
    "profile_failed",
    "data_ok",
    "data_400",
    "data_401",
    "data_503",
    "data_other",
    "other",
    "misbehaved",
]


class ControlView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]


class StatsView(ControlView):
    def get(self, request):
        stats = dict.fromkeys(STAT_NAMES, 0)
        stats.update({c.name: c.value for c in Counter.objects.all()})
        return Response(stats)


class ReadingsView(ControlView):
    def get(self, request):
        rows = Reading.objects.select_related("user").order_by("id")
        out = []
        for row in rows:
            item = ReadingSerializer(row).data
            item["username"] = row.user.username
            out.append(item)
        return Response(out)


class BlacklistAllView(ControlView):
    def post(self, request):
        count = 0
        for token in OutstandingToken.objects.filter(blacklistedtoken__isnull=True):
            _, created = BlacklistedToken.objects.get_or_create(token=token)
            count += int(created)
        return Response({"blacklisted": count})


class FaultsView(ControlView):
    def get(self, request):
        f = Faults.current()
        return Response(
            {
                "fail_ratio": f.fail_ratio,
                "retry_after": f.retry_after,
                "reject_temperature_above": f.reject_temperature_above,
            }
        )

    def post(self, request):
        data = request.data if isinstance(request.data, dict) else {}
        try:
            fail_ratio = float(data.get("fail_ratio") or 0.0)
            retry_after = data.get("retry_after")
            retry_after = None if retry_after is None else int(retry_after)
            threshold = data.get("reject_temperature_above")
            threshold = None if threshold is None else float(threshold)
        except (TypeError, ValueError) as e:
            return Response({"detail": str(e)}, status=status.HTTP_400_BAD_REQUEST)
        if not 0.0 <= fail_ratio <= 1.0:
            return Response(
                {"detail": "fail_ratio must be in [0, 1]"}, status=status.HTTP_400_BAD_REQUEST
            )
        Faults.objects.update_or_create(
            pk=1,
            defaults={
                "fail_ratio": fail_ratio,
                "retry_after": retry_after,
                "reject_temperature_above": threshold,
            },
        )
        return self.get(request)


class MisbehaveView(ControlView):
    """What a proxy in front of the app answers instead of it (readings.misbehave):
    {"mode": "", "mode_scope": "data", "delay_ms": 0}; absent keys take these defaults.
    Independent of /faults/ (each keeps the other's settings)."""

    def get(self, request):
        f = Faults.current()
        return Response({"mode": f.mode, "mode_scope": f.mode_scope, "delay_ms": f.delay_ms})

    def post(self, request):
        data = request.data if isinstance(request.data, dict) else {}
        mode = str(data.get("mode") or "")
        scope = str(data.get("mode_scope") or "data")
        try:
            delay_ms = int(data.get("delay_ms") or 0)
        except (TypeError, ValueError) as e:
            return Response({"detail": str(e)}, status=status.HTTP_400_BAD_REQUEST)
        if mode not in MODES or scope not in SCOPES or delay_ms < 0:
            return Response(
                {"detail": f"mode must be one of {MODES}, mode_scope one of {sorted(SCOPES)}, delay_ms >= 0"},
                status=status.HTTP_400_BAD_REQUEST,
            )
        Faults.objects.update_or_create(
            pk=1, defaults={"mode": mode, "mode_scope": scope, "delay_ms": delay_ms}
        )
        return self.get(request)


class UsersView(ControlView):
    """Create or update a user: {"username", "password", "active" (default true), "email"}."""

    def post(self, request):
        data = request.data if isinstance(request.data, dict) else {}
        username = data.get("username")
        if not username:
            return Response({"username": ["required"]}, status=status.HTTP_400_BAD_REQUEST)
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username)
        if data.get("password") is not None:
            user.set_password(data["password"])
        if "active" in data:
            user.is_active = bool(data["active"])
        if "email" in data:
            user.email = data["email"] or ""
        elif created and "@" in username:
            user.email = username
        user.save()
        return Response(
            {"id": user.id, "username": user.username, "active": user.is_active, "created": created},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
