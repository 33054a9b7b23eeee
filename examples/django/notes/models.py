from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    pinned = models.BooleanField(default=False)  # added in release 2 (migration 0002)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
