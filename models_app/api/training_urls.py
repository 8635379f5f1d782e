from django.urls import path
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from models_app.api import training_tasks
from models_app.api.authentication import UserTokenObtainPairSerializer, UserTokenRefreshSerializer

urlpatterns = [
    path("auth/token", TokenObtainPairView.as_view(serializer_class=UserTokenObtainPairSerializer), name="auth-token"),
    path(
        "auth/token/refresh",
        TokenRefreshView.as_view(serializer_class=UserTokenRefreshSerializer),
        name="auth-token-refresh",
    ),
    path("training/", training_tasks.TrainingTaskListApi.as_view(), name="training-task-list"),
    path("training/<str:task_id>", training_tasks.TrainingTaskDetailApi.as_view(), name="training-task-detail"),
    path("training/<str:task_id>/cancel", training_tasks.TrainingTaskCancelApi.as_view(), name="training-task-cancel"),
]
