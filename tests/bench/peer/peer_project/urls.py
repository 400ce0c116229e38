"""No HTTP routes: the peer serves only the notification WebSocket."""

urlpatterns = []
