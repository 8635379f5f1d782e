"""Settings shared by every role. Everything that differs between machines is read from the environment."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# Working data (SQLite file, media, base models, training folders) lives here unless set otherwise.
VAR_DIR = Path(env("VAR_DIR", str(BASE_DIR / "var")))

SECRET_KEY = env("DJANGO_SECRET_KEY", "")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "models_app.apps.ConsoleAdminConfig",  # django.contrib.admin, its index the training dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "training",  # before django_q: its `qcluster` command replaces django-q2's (a graceful stop)
    "django_q",
    "models_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "models_app.api.boundary.ApiBoundaryMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"


def database_config() -> dict[str, object]:
    """PostgreSQL (psycopg 3) when DATABASE_URL is set, else a SQLite file under VAR_DIR."""
    url = env("DATABASE_URL")
    if not url:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    config = dict(dj_database_url.parse(url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60)))
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # The web process and the worker write to the same file: wait for locks instead of failing,
        # take the write lock up front, and let readers proceed while one writes (WAL).
        config["CONN_MAX_AGE"] = 0
        config["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    return config


DATABASES = {"default": database_config()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT", str(VAR_DIR / "static")))
# The documentation site `make docs` builds from docs/ (MkDocs), served at /docs/.
DOCS_SITE_DIR = Path(env("DOCS_SITE_DIR", str(VAR_DIR / "docs-site")))
MEDIA_URL = env("MEDIA_URL", "/media/")
MEDIA_ROOT = Path(env("MEDIA_ROOT", str(VAR_DIR / "media")))
SERVE_MEDIA = env_bool("SERVE_MEDIA", False)  # let Django serve MEDIA_ROOT (development and tests only)
# Media URLs handed out are signed (local storage) or presigned (S3) and expire after this long.
MEDIA_URL_MAX_AGE_SECONDS = env_int("MEDIA_URL_MAX_AGE_SECONDS", 3600)
# Where this server is reached from outside: absolute URLs made without a request (MCP, commands).
PUBLIC_BASE_URL = env("PUBLIC_BASE_URL", "http://127.0.0.1:8000")
# Uploads are read into memory up to this size, then spooled to disk; images are capped below.
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
# Larger uploads are spooled to tmp*.upload.* files in this folder, which holds nothing else, so the
# orphan sweep can remove what a killed web worker left without touching other programs' files. Django
# does not create it, and without it every large upload would fail.
FILE_UPLOAD_TEMP_DIR = env("FILE_UPLOAD_TEMP_DIR", str(VAR_DIR / "upload-tmp"))
Path(FILE_UPLOAD_TEMP_DIR).mkdir(parents=True, exist_ok=True)
# The orphan sweep (models_app/services/sweeper.py) removes stored files no row names, temporary uploads
# and abandoned work folders only once they have not changed for this long: longer than any upload or
# save takes, since a younger file may belong to a row about to be committed.
ORPHAN_GRACE_SECONDS = env_int("ORPHAN_GRACE_SECONDS", 24 * 3600)
DATA_UPLOAD_MAX_MEMORY_SIZE = 60 * 1024 * 1024
# The largest request body the API reads (a 20 MB image as a base64 data URL is about 27 MB); larger is a 413.
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 40 * 1024 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "models_app.api.authentication.ApiKeyAuthentication",
        "models_app.api.authentication.UserJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": [
        "models_app.api.inputs.BoundedJSONParser",
        "models_app.api.inputs.BoundedMultiPartParser",
        "models_app.api.inputs.BoundedFormParser",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "EXCEPTION_HANDLER": "models_app.api.exceptions.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

# How long a read may trust an API key this process found active, without reading it again (seconds;
# 0: every request reads it). A revoked key can go on reading for that long: see api_key_authenticate.
API_KEY_CACHE_SECONDS = env_int("API_KEY_CACHE_SECONDS", 5)

# Per-key rate limits (models_app/api/throttling.py): "N/second|minute|hour|day", or "off".
API_THROTTLE_RATES: dict[str, str | None] = {
    scope: (None if value.lower() in ("", "off", "none") else value)
    for scope, value in (
        ("uploads", env("API_THROTTLE_UPLOADS", "120/min")),
        ("starts", env("API_THROTTLE_STARTS", "20/min")),
        ("generations", env("API_THROTTLE_GENERATIONS", "60/min")),
    )
}
# Throttle counts live in the cache: per process by default; a shared Redis cache counts across processes.
if env("CACHE_REDIS_URL"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": env("CACHE_REDIS_URL")}}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env_int("JWT_ACCESS_MINUTES", 30)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env_int("JWT_REFRESH_DAYS", 7)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": True,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Image training platform API",
    "DESCRIPTION": (
        "Custom image model training: the /v1 model, training-image, asset, generation and tool endpoints, "
        "and the /api/v1/training task resource. Authenticate with a team API key (Bearer `key.secret` "
        "or Basic `key:secret`) or a user JWT from /api/v1/auth/token."
    ),
    "VERSION": "1.0.0",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "models_app.api.schema.add_error_responses",
    ],
    "ENUM_NAME_OVERRIDES": {
        "TaskStatusEnum": "models_app.models.TaskStatus",
        "ModelStatusEnum": "models_app.models.ModelStatus",
        "JobStatusEnum": "models_app.models.JobStatus",
    },
}

# django-q2 with the ORM broker: the database is the queue, so nothing else needs to run.
# A training can run for hours: the timeout is long, and `retry` (re-delivery of a task whose
# worker vanished) is longer still; the runner's claim makes a second delivery harmless.
TRAINING_TIMEOUT_SECONDS = env_int("TRAINING_TIMEOUT_SECONDS", 12 * 3600)
# Two queues. TRAINING_QUEUE: every GPU cluster of a deployment shares it (trainings, generations).
# HOUSEKEEPING_QUEUE: a small cluster that never takes GPU work runs the reaper, webhook deliveries and
# the orphan sweep, so a deployment whose GPUs all train for hours still reaps and delivers. It is
# django-q2's ALT_CLUSTERS: start it with `Q_CLUSTER_NAME=housekeeping python manage.py qcluster`.
TRAINING_QUEUE = env("Q_QUEUE_NAME", "training")
HOUSEKEEPING_QUEUE = "housekeeping"
HOUSEKEEPING_TIMEOUT_SECONDS = env_int("HOUSEKEEPING_TIMEOUT_SECONDS", 600)
Q_CLUSTER: dict[str, object] = {
    "name": TRAINING_QUEUE,
    "workers": env_int("Q_WORKERS", 1),  # one training per GPU
    "recycle": 50,
    "timeout": TRAINING_TIMEOUT_SECONDS,
    "retry": TRAINING_TIMEOUT_SECONDS + 600,
    "max_attempts": 1,
    "poll": float(env("Q_POLL_SECONDS", "0.5")),
    "catch_up": False,
    "save_limit": 1000,
    "ack_failures": True,
    "label": "Training queue",
    "ALT_CLUSTERS": {
        HOUSEKEEPING_QUEUE: {
            "workers": env_int("HOUSEKEEPING_WORKERS", 2),
            "recycle": 500,
            "timeout": HOUSEKEEPING_TIMEOUT_SECONDS,
            "retry": HOUSEKEEPING_TIMEOUT_SECONDS + 60,
            "label": "Housekeeping",
        }
    },
}
if env("Q_BROKER", "orm") == "redis":
    Q_CLUSTER["redis"] = env("REDIS_URL", "redis://127.0.0.1:6379/0")
else:
    Q_CLUSTER["orm"] = "default"

# Files: local disk by default; any S3-compatible store with STORAGE_BACKEND=s3 (django-storages).
if env("STORAGE_BACKEND", "local") == "s3":
    STORAGES = {
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": env("S3_BUCKET"),
                "endpoint_url": env("S3_ENDPOINT_URL") or None,
                "region_name": env("S3_REGION") or None,
                "access_key": env("S3_ACCESS_KEY_ID") or None,
                "secret_key": env("S3_SECRET_ACCESS_KEY") or None,
                "default_acl": None,
                "querystring_auth": True,  # presigned URLs (models_app/media_access.py)
                "querystring_expire": env_int("MEDIA_URL_MAX_AGE_SECONDS", 3600),
                "file_overwrite": False,
            },
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }

# Training
# A base model is a local diffusers folder under one of these roots, or a hub id on machines that
# can reach the hub. The default is what a task gets when it names none.
TRAINING_BASE_MODEL_ROOTS = [Path(p) for p in env_list("TRAINING_BASE_MODEL_ROOTS", [str(VAR_DIR / "base-models")])]
TRAINING_DEFAULT_BASE_MODEL = env("TRAINING_DEFAULT_BASE_MODEL", "black-forest-labs/FLUX.1-dev")
TRAINING_ALLOW_HUB_MODELS = env_bool("TRAINING_ALLOW_HUB_MODELS", True)
TRAINING_WORK_DIR = Path(env("TRAINING_WORK_DIR", str(VAR_DIR / "work")))
# torch.compile's caches (Inductor's and Triton's kernels), kept under var/ rather than the system temp folder,
# so the orphan sweep finds them: files unused for ORPHAN_GRACE_SECONDS are removed (a later run recompiles).
# Set here, before any torch import, for every process of the project and the training ranks it starts.
COMPILE_CACHE_DIR = Path(env("COMPILE_CACHE_DIR", str(VAR_DIR / "compile-cache")))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(COMPILE_CACHE_DIR / "inductor"))
os.environ.setdefault("TRITON_CACHE_DIR", str(COMPILE_CACHE_DIR / "triton"))
# A local image-to-text model folder (BLIP, GIT, Florence...) for the `automatic` captioning strategy.
TRAINING_CAPTION_MODEL = env("TRAINING_CAPTION_MODEL", "")
# CPU threads torch may use in a worker (0: torch's default). Set it to cores / workers when several
# CPU workers share a machine, or their threads fight over the cores.
TRAINING_CPU_THREADS = env_int("TRAINING_CPU_THREADS", 0)
TRAINING_DEVICE = env("TRAINING_DEVICE", "") or None  # "" picks CUDA when present, else the CPU
# The devices this machine's workers share out to trainings (a task holds `gpus` of them while it runs).
# GPUs 0..N-1 as the workers see them (CUDA_VISIBLE_DEVICES applies), or N CPU processes when
# TRAINING_DEVICE is cpu. One qcluster per machine with as many workers as GPUs runs a mix of 1-GPU
# and N-GPU tasks; TRAINING_MACHINE_NAME tells machines apart (default: the host name, with
# TRAINING_WORKER_NAME when set, so a qcluster per GPU still counts as a machine of one GPU each).
# Default: as many as the cluster has workers (Q_WORKERS), one training each, as before multi-GPU tasks.
TRAINING_GPUS = env_int("TRAINING_GPUS", env_int("Q_WORKERS", 1))
TRAINING_MACHINE_NAME = env("TRAINING_MACHINE_NAME", "")
# Where a claimed training runs: "local" (in the worker, on its machine's GPUs) or "ray" (a Ray job on an
# existing Ray cluster, which then schedules the GPUs: training/ray_jobs.py). With "ray", TRAINING_GPUS is
# the most GPUs one Ray node offers a job (the start refuses more).
TRAINING_EXECUTION = env("TRAINING_EXECUTION", "local")
TRAINING_RAY_ADDRESS = env("TRAINING_RAY_ADDRESS", "http://127.0.0.1:8265")  # the Ray dashboard (Jobs API)
TRAINING_RAY_PROJECT_DIR = Path(env("TRAINING_RAY_PROJECT_DIR", str(BASE_DIR)))  # this project on the Ray nodes
TRAINING_RAY_PYTHON = env("TRAINING_RAY_PYTHON", sys.executable)  # its interpreter there
TRAINING_RAY_ENV_VARS = env_list(
    "TRAINING_RAY_ENV_VARS",
    ["DJANGO_SETTINGS_MODULE", "DATABASE_URL", "Q_BROKER", "REDIS_URL", "STORAGE_BACKEND", "S3_BUCKET",
     "S3_ENDPOINT_URL", "S3_REGION", "MEDIA_ROOT", "VAR_DIR", "TRAINING_WORK_DIR", "TRAINING_BASE_MODEL_ROOTS",
     "TRAINING_DEVICE", "TRAINING_CPU_THREADS", "COMPILE_CACHE_DIR"],
)  # fmt: skip
TRAINING_RAY_POLL_SECONDS = float(env("TRAINING_RAY_POLL_SECONDS", "2"))
TRAINING_RAY_CANCEL_GRACE_SECONDS = float(env("TRAINING_RAY_CANCEL_GRACE_SECONDS", "30"))
TRAINING_IMAGE_COUNT_BOUNDS = (env_int("TRAINING_MIN_IMAGES", 12), env_int("TRAINING_MAX_IMAGES", 20))
# Trainings queued or running per team when the team sets no limit of its own (0: no limit).
TRAINING_MAX_PARALLEL_PER_TEAM = env_int("TRAINING_MAX_PARALLEL_PER_TEAM", 0)
# Credits per 1000 SD 1.5 steps at 512 px, batch 1; other families and sizes scale from it.
CREDITS_PER_1000_STEPS = float(env("CREDITS_PER_1000_STEPS", "10"))
# Folders that seed 003's `source_images` paths may name (kohya-style dataset folders on the server).
TRAINING_IMPORT_ROOTS = [Path(p) for p in env_list("TRAINING_IMPORT_ROOTS", [str(VAR_DIR / "imports")])]
TRAINING_PROGRESS_WRITE_SECONDS = float(env("TRAINING_PROGRESS_WRITE_SECONDS", "2"))
TRAINING_LEASE_SECONDS = env_int("TRAINING_LEASE_SECONDS", 300)
# A worker asked to stop (SIGTERM or SIGINT to its qcluster) saves a snapshot at the next step and hands
# its task back to the queue; after this many seconds it hands the task back wherever the run is.
TRAINING_SHUTDOWN_GRACE_SECONDS = env_int("TRAINING_SHUTDOWN_GRACE_SECONDS", 60)

WEBHOOK_TIMEOUT_SECONDS = float(env("WEBHOOK_TIMEOUT_SECONDS", "10"))
# Progress webhooks at most this often per task.
WEBHOOK_PROGRESS_SECONDS = float(env("WEBHOOK_PROGRESS_SECONDS", "30"))

# Uploaded images
IMAGE_MAX_BYTES = env_int("IMAGE_MAX_BYTES", 20 * 1024 * 1024)
IMAGE_MAX_PIXELS = env_int("IMAGE_MAX_PIXELS", 50_000_000)
IMAGE_MIN_SIDE = env_int("IMAGE_MIN_SIDE", 64)
IMAGE_FORMATS = env_list("IMAGE_FORMATS", ["JPEG", "PNG", "WEBP"])
# Images fetched by URL: http(s) only, bounded in time and redirects; private, loopback and
# link-local hosts refused unless allowed here (tests serve images on loopback).
IMAGE_URL_TIMEOUT_SECONDS = float(env("IMAGE_URL_TIMEOUT_SECONDS", "20"))
IMAGE_URL_MAX_REDIRECTS = env_int("IMAGE_URL_MAX_REDIRECTS", 3)
IMAGE_URL_ALLOW_PRIVATE_HOSTS = env_bool("IMAGE_URL_ALLOW_PRIVATE_HOSTS", False)
# Images added to a model in one call at most: the REST API's assetIds and the train tool's images alike (seed 001's
# own example sends 13 in one call): as many as a model trains on.
IMAGES_PER_CALL_MAX = env_int("IMAGES_PER_CALL_MAX", 20)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"client_errors_on_one_line": {"()": "config.logging.ClientErrorsOnOneLine"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["client_errors_on_one_line"],
        }
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    # Django's own loggers print through the root's handler only (its default adds a second console handler,
    # which printed every refused request twice).
    "loggers": {"django": {"handlers": [], "level": "INFO", "propagate": True}},
}
