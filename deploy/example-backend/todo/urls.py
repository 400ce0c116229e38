from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # API login: username + password → SimpleJWT access + refresh tokens.
    path("api/token/", TokenObtainPairView.as_view(), name="token_obtain_pair"),
    path("api/token/refresh/", TokenRefreshView.as_view(), name="token_refresh"),
    # The gateway's token view (gateway/token/, the page's getToken) and
    # session view (gateway/session/, the gateway's auth.session_url).
    path("gateway/", include("django_gateway.urls")),
    path("", include("todos.urls")),
]
