"""The test suite: SQLite unless DATABASE_URL names PostgreSQL; every file under a temporary folder."""

import os
import tempfile

from config.settings.base import *  # noqa: F403
from config.settings.base import DATABASES, env

# Tests never reach a model hub: a hub id must fail at once, not after a network timeout.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SECRET_KEY = env("DJANGO_SECRET_KEY", "test-only-this-is-not-a-secret-key-for-signing")
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
TRAINING_PROGRESS_WRITE_SECONDS = 0.2

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory: the integration tests start a real qcluster process that must see the data.
    DATABASES["default"]["TEST"] = {
        "NAME": env("SQLITE_TEST_NAME", "")
        or os.path.join(tempfile.gettempdir(), f"platform-test-{os.getpid()}.sqlite3")
    }
SERVE_MEDIA = True
# Rate limits off: tests make many calls quickly; the throttle tests turn them on.
API_THROTTLE_RATES = {"uploads": None, "starts": None, "generations": None}
