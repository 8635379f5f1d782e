from django.urls import path

from models_app.api import tools, v1_assets, v1_models, v1_training_images

urlpatterns = [
    path("models", v1_models.ModelListApi.as_view(), name="model-list"),
    path("models/<str:model_id>", v1_models.ModelDetailApi.as_view(), name="model-detail"),
    path("models/<str:model_id>/train", v1_models.ModelTrainApi.as_view(), name="model-train"),
    path("models/<str:model_id>/train/action", v1_models.ModelTrainActionApi.as_view(), name="model-train-action"),
    path(
        "models/<str:model_id>/training-images",
        v1_training_images.TrainingImageListApi.as_view(),
        name="training-image-list",
    ),
    # Before the image route, so that "pairs" is never read as an image id.
    path("models/<str:model_id>/training-images/pairs", v1_training_images.PairsApi.as_view(), name="pairs"),
    path(
        "models/<str:model_id>/training-images/<str:image_id>",
        v1_training_images.TrainingImageDetailApi.as_view(),
        name="training-image-detail",
    ),
    path("assets", v1_assets.AssetListApi.as_view(), name="asset-list"),
    path("assets/<str:asset_id>", v1_assets.AssetDetailApi.as_view(), name="asset-detail"),
    path("images/generation", v1_assets.GenerationApi.as_view(), name="generation"),
    path("jobs/<str:job_id>", v1_assets.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<str:job_id>/cancel", v1_assets.JobCancelApi.as_view(), name="job-cancel"),
    path("tools/train", tools.TrainToolApi.as_view(), name="tool-train"),
]
