from celery import shared_task

from notes.models import Note


@shared_task
def count_notes() -> int:
    """Run by the worker: proves the broker and the database from its side."""
    return Note.objects.count()
