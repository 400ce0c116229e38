from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework import generics, serializers

from .forms import TaskForm
from .models import Task


def wants_json(request):
    return "application/json" in request.headers.get("Accept", "")


@login_required
def index(request):
    """The task list and the form. The form posts with fetch() so the page,
    and its WebSocket, stay open; without JavaScript it posts normally."""
    form = TaskForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            task = form.save(commit=False)
            task.owner = request.user
            task.save()
            if wants_json(request):
                return JsonResponse(task.as_dict(), status=201)
            return redirect("index")
        if wants_json(request):
            return JsonResponse({"errors": form.errors}, status=400)
    return render(
        request,
        "todos/index.html",
        {
            "form": form,
            "tasks": request.user.tasks.all(),
            "client_config": {
                "wsUrl": settings.GATEWAY_WS_URL,
                "tokenUrl": reverse("django_gateway:token"),
                "tasksUrl": "/api/tasks/",
            },
        },
    )


@login_required
@require_POST
def mark_done(request, pk):
    task = get_object_or_404(Task, pk=pk, owner=request.user)
    task.done = True
    task.save()
    if wants_json(request):
        return JsonResponse(task.as_dict())
    return redirect("index")


@login_required
def live(request):
    """The few lines a page needs, from the django_gateway template tag:
    ?mode=token (the package's token view) or ?mode=session (the gateway in
    session mode asks the package's session view)."""
    mode = "session" if request.GET.get("mode") == "session" else "token"
    ws_url = settings.GATEWAY_SESSION_WS_URL if mode == "session" else settings.GATEWAY_WS_URL
    return render(request, "todos/live.html", {"mode": mode, "ws_url": ws_url})


class TaskSerializer(serializers.ModelSerializer):
    class Meta:
        model = Task
        fields = ["id", "title", "due_at", "done"]


class TaskList(generics.ListCreateAPIView):
    """JSON API with JWT (Authorization: Bearer) or session authentication."""

    serializer_class = TaskSerializer

    def get_queryset(self):
        return self.request.user.tasks.all()

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)
