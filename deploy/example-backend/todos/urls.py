from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("tasks/<int:pk>/done/", views.mark_done, name="task_done"),
    path("api/ws-token/", views.ws_token, name="ws_token"),
    path("api/tasks/", views.TaskList.as_view(), name="api_tasks"),
]
