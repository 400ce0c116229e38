from django.urls import include, path

urlpatterns = [path("gateway/", include("django_gateway.urls"))]
