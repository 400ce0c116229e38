from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from .models import Task
from .notify import notify_user


@shared_task
def send_due_soon_reminders():
    """Periodic (Celery beat): one "due soon" reminder per open task that is
    due within DUE_SOON_MINUTES. Returns how many were sent."""
    now = timezone.now()
    soon = now + timedelta(minutes=settings.DUE_SOON_MINUTES)
    sent = 0
    for task in Task.objects.filter(done=False, reminder_sent=False, due_at__gte=now, due_at__lte=soon):
        # .update() claims the task (no post_save, no second reminder).
        if Task.objects.filter(pk=task.pk, reminder_sent=False).update(reminder_sent=True):
            remind_due_soon(task.owner_id, task.title, task.due_at)
            sent += 1
    return sent


def remind_due_soon(user_id, title, due_at):
    minutes = max(0, round((due_at - timezone.now()).total_seconds() / 60))
    notify_user(user_id, f'You have a task due soon! "{title}" is due in {minutes} min')
