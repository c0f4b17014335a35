from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Django answers here; BITS uploads go to /uploads/.\n")


@csrf_exempt
@require_POST
def echo(request: HttpRequest) -> HttpResponse:
    """Shows that ordinary requests reach Django with their bodies intact."""
    return HttpResponse(request.body, content_type="application/octet-stream")
