"""Development and the demo: SQLite, the ORM broker, a tiny base model built locally, the CPU."""

from config.settings.base import *  # noqa: F403
from config.settings.base import VAR_DIR, env, env_bool

DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = env("DJANGO_SECRET_KEY", "local-development-only-this-is-not-a-secret-key")
# `manage.py demo` (or `make_base_model`) writes the tiny model here.
TRAINING_DEFAULT_BASE_MODEL = env("TRAINING_DEFAULT_BASE_MODEL", str(VAR_DIR / "base-models" / "tiny-sd15"))
SERVE_MEDIA = True
