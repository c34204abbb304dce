"""What a misbehaving proxy, load balancer or captive portal in front of the app answers
(set with POST /test-control/misbehave/ {"mode": ..., "mode_scope": ...}), and an extra
latency for data requests ({"delay_ms": ...}).

Each answer is one the gateway must never count as an acceptance (shared/API.md).
"""
import time

from django.http import HttpResponse, StreamingHttpResponse

from .middleware import DATA, LOGIN, REFRESH
from .models import Faults

MODES = ["", "redirect_302", "redirect_307", "html_200", "not_found", "forbidden", "huge_200", "huge_502"]
SCOPES = {"data": {DATA}, "token": {LOGIN, REFRESH}, "all": {DATA, LOGIN, REFRESH}}

PORTAL = (
    "<!DOCTYPE html><html><head><title>Hotel Wi-Fi - Log in</title></head>"
    "<body><h1>Welcome</h1><p>Please accept the terms to use the Internet.</p>"
    "<form method=post action=/portal/><input type=submit></form></body></html>"
)
NOT_FOUND = (
    "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
    "<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
HUGE_BYTES = 256 * 1024 * 1024
CHUNK = b"<p>" + b"x" * (64 * 1024 - 7) + b"</p>\n"


def huge_page():
    yield b"<html><head><title>Error</title></head><body>"
    sent = 0
    while sent < HUGE_BYTES:
        yield CHUNK
        sent += len(CHUNK)
    yield b"</body></html>"


def answer(mode, path):
    if mode == "redirect_302":
        r = HttpResponse("", status=302)
        r["Location"] = "/maintenance/"
        return r
    if mode == "redirect_307":
        r = HttpResponse("", status=307)
        r["Location"] = "/moved" + path
        return r
    if mode == "html_200":
        return HttpResponse(PORTAL, status=200, content_type="text/html")
    if mode == "not_found":
        return HttpResponse(NOT_FOUND, status=404, content_type="text/html")
    if mode == "forbidden":
        return HttpResponse(
            '{"detail":"You do not have permission to perform this action."}',
            status=403,
            content_type="application/json",
        )
    if mode in ("huge_200", "huge_502"):
        return StreamingHttpResponse(
            huge_page(), status=200 if mode == "huge_200" else 502, content_type="text/html"
        )
    return None


class MisbehaveMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path in SCOPES["all"]:
            faults = Faults.current()
            if faults.delay_ms and request.path == DATA:
                time.sleep(faults.delay_ms / 1000.0)
            if faults.mode and request.method == "POST" and request.path in SCOPES.get(faults.mode_scope, ()):
                response = answer(faults.mode, request.path)
                if response is not None:
                    response.profilo_misbehaved = True
                    return response
        if request.path == "/maintenance/":
            return HttpResponse(
                "<html><head><title>Down for maintenance</title></head><body>Back soon</body></html>",
                status=200,
                content_type="text/html",
            )
        return self.get_response(request)
