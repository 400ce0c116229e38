from django.apps import AppConfig


class TodosConfig(AppConfig):
    name = "todos"

    def ready(self):
        from . import signals  # noqa: F401  (connects the post_save handler)
