"""A JSON API over one model, and the health view the compose healthcheck calls."""

import json

from django.db import connection
from django.forms import modelform_factory
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from shop.celery import app as celery_app

from notes.models import Note
from notes.tasks import count_notes

NoteForm = modelform_factory(Note, exclude=["created"])


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"service": "shop", "notes": Note.objects.count()})


@csrf_exempt
def notes(request: HttpRequest) -> JsonResponse:
    """GET lists the notes; POST (JSON) creates one."""
    if request.method == "POST":
        form = NoteForm(json.loads(request.body or b"{}"))
        if not form.is_valid():
            return JsonResponse({"errors": form.errors}, status=400)
        note = form.save()
        return JsonResponse(_as_dict(note), status=201)
    return JsonResponse({"notes": [_as_dict(note) for note in Note.objects.all()]})


def count(request: HttpRequest) -> JsonResponse:
    """The worker counts the notes (a round trip through the broker)."""
    return JsonResponse({"count": count_notes.delay().get(timeout=10)})


def health(request: HttpRequest) -> JsonResponse:
    """200 when the database and the broker answer, else 503 with the failing one."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM notes_note LIMIT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = type(exc).__name__
    try:
        with celery_app.connection_for_write() as broker:
            broker.ensure_connection(max_retries=1, timeout=3)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = type(exc).__name__
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(checks, status=200 if healthy else 503)


def _as_dict(note: Note) -> dict[str, object]:
    return {field.name: getattr(note, field.name) for field in Note._meta.fields}
