from django.conf import settings
from django.db import models


class Task(models.Model):
    title = models.CharField(max_length=200)
    due_at = models.DateTimeField(null=True, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks")
    done = models.BooleanField(default=False)
    # Set by the Celery reminder so each task is reminded about once.
    reminder_sent = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["done", "due_at", "id"]

    def __str__(self):
        return self.title

    def as_dict(self):
        return {
            "id": self.id,
            "title": self.title,
            "due_at": self.due_at.isoformat() if self.due_at else None,
            "done": self.done,
        }
