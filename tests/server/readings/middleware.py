"""Counts requests by path and status into readings.models.Counter."""
from .models import Counter

LOGIN = "/api/token/"
REFRESH = "/api/token/refresh/"
VERIFY = "/api/token/verify/"
PROFILE = "/api/auth/profile/"
DATA = "/api/send/data/"


def counter_names(path, status):
    """The counters a request to `path` answered with `status` increments."""
    if path.startswith("/test-control/"):
        return []
    names = ["requests_total"]
    ok = 200 <= status < 300
    if path == LOGIN:
        names.append("login_ok" if ok else "login_failed")
    elif path == REFRESH:
        names.append("refresh_ok" if ok else "refresh_failed")
    elif path == VERIFY:
        names.append("verify_ok" if ok else "verify_failed")
    elif path == PROFILE:
        names.append("profile_ok" if ok else "profile_failed")
    elif path == DATA:
        if ok:
            names.append("data_ok")
        elif status in (400, 401, 503):
            names.append(f"data_{status}")
        else:
            names.append("data_other")
    else:
        names.append("other")
    return names


class StatsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        names = counter_names(request.path, response.status_code)
        if getattr(response, "profilo_misbehaved", False):
            # Answered by the stand-in proxy, not the app: never a data_ok.
            names = ["requests_total", "misbehaved"]
        for name in names:
            Counter.bump(name)
        return response
