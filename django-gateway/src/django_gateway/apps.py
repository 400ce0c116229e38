from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "django_gateway"
    label = "django_gateway"
    verbose_name = "Notification gateway"

    def ready(self):
        from . import checks  # noqa: F401  (registers the system checks)
