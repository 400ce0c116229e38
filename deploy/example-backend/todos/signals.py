from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from .models import Task
from .notify import notify_user


@receiver(post_save, sender=Task)
def task_saved(sender, instance, created, **kwargs):
    if created:
        message = f'New task: "{instance.title}"'
    elif instance.done:
        message = f'Task done: "{instance.title}"'
    else:
        message = f'Task updated: "{instance.title}"'
    # After the commit, so a browser that reacts can already read the row.
    transaction.on_commit(lambda: notify_user(instance.owner_id, message))
