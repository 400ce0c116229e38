from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST
from rest_framework import generics, serializers
from rest_framework_simplejwt.tokens import AccessToken

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
                "tokenUrl": "/api/ws-token/",
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


@never_cache
def ws_token(request):
    """A fresh SimpleJWT access token for the logged-in session, for the
    gateway's ?token=. The page asks again before every (re)connect."""
    if not request.user.is_authenticated:
        return JsonResponse({"detail": "not logged in"}, status=401)
    return JsonResponse({"access": str(AccessToken.for_user(request.user))})


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
