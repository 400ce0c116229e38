from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.utils import timezone

from todos.models import Task

USERS = [("demo", "demo-password"), ("demo2", "demo-password")]


class Command(BaseCommand):
    help = "Creates the demo users (demo / demo-password, demo2 / demo-password) and a few tasks for demo."

    def handle(self, *args, **options):
        User = get_user_model()
        for username, password in USERS:
            user, _ = User.objects.get_or_create(username=username)
            user.set_password(password)
            user.save()
        demo = User.objects.get(username="demo")
        if not demo.tasks.exists():
            now = timezone.now()
            Task.objects.bulk_create(  # bulk_create: no signals, nobody is listening yet
                [
                    Task(owner=demo, title="Water the plants", due_at=now + timedelta(minutes=30)),
                    Task(owner=demo, title="Submit the expense report", due_at=now + timedelta(days=1)),
                    Task(owner=demo, title="Read the gateway README", done=True),
                ]
            )
        self.stdout.write("demo users: demo / demo-password, demo2 / demo-password")
