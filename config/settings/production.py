"""Production: PostgreSQL through DATABASE_URL, a real secret, HTTPS."""

from config.settings.base import *  # noqa: F403
from config.settings.base import DATABASES, SECRET_KEY, env_bool, env_int

if not SECRET_KEY:
    raise RuntimeError("DJANGO_SECRET_KEY must be set in production")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    raise RuntimeError("DATABASE_URL must point at PostgreSQL in production")

DEBUG = False
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
