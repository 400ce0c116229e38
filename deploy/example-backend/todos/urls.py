from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("tasks/<int:pk>/done/", views.mark_done, name="task_done"),
    path("live/", views.live, name="live"),
    path("api/tasks/", views.TaskList.as_view(), name="api_tasks"),
]
