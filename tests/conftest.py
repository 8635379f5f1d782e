"""Shared fixtures: every file under a temporary folder, and a tiny SD 1.5 base model built once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from training.engine.testing import build_tiny_model


@pytest.fixture(scope="session")
def base_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("base-models")


@pytest.fixture(scope="session")
def tiny_sd15(base_models_root: Path) -> Path:
    """A real diffusers folder of a tiny random-weight SD 1.5 model (built in seconds, nothing downloaded)."""
    return build_tiny_model("sd15", base_models_root / "tiny-sd15")


@pytest.fixture(autouse=True)
def isolated_files(settings, tmp_path: Path, base_models_root: Path) -> Iterator[None]:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.TRAINING_WORK_DIR = tmp_path / "work"
    settings.VAR_DIR = tmp_path / "var"
    # The sweeper judges this folder; the process's compile caches stay where the settings put them
    # (TORCHINDUCTOR_CACHE_DIR is read once), so a test never sees kernels other tests compiled.
    settings.COMPILE_CACHE_DIR = tmp_path / "var" / "compile-cache"
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "upload-tmp")
    Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir(exist_ok=True)
    settings.TRAINING_BASE_MODEL_ROOTS = [base_models_root]
    settings.TRAINING_DEFAULT_BASE_MODEL = str(base_models_root / "tiny-sd15")
    yield


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test() -> Iterator[None]:
    """No thread a test started may still run after it."""
    import threading

    def ours(thread: threading.Thread) -> bool:
        # Our code's and the tests' threads; libraries keep process-wide ones (tqdm's monitor, torch's
        # compile pool) that are theirs to end.
        target = getattr(thread, "_target", None)
        module = getattr(target, "__module__", None) or type(thread).__module__
        return module.split(".")[0] in ("training", "models_app", "tests", "config", "bench")

    before = set(threading.enumerate())
    yield
    started = [thread for thread in set(threading.enumerate()) - before if ours(thread)]
    for thread in started:
        thread.join(timeout=30)  # a ceiling against a hang: a test's threads end with the test
    left = [thread.name for thread in started if thread.is_alive()]
    assert not left, f"threads still running after the test: {left}"


@pytest.fixture(scope="session", autouse=True)
def test_database_left_clean(django_db_setup: None, django_db_blocker) -> Iterator[None]:
    """Before the test database is dropped: end the sessions other processes (a killed worker's
    connection that PostgreSQL has not noticed yet) still hold on it, so the drop succeeds."""
    yield
    from django.db import connection

    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        connection.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """SQLite's write-ahead log files stay beside a dropped test database: remove them too."""
    from django.conf import settings

    name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3") and name:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)


@pytest.fixture
def fast_training() -> dict[str, object]:
    """Parameters that train the tiny model in a few seconds on a CPU."""
    return {
        "steps": 20,
        "rank": 4,
        "learning_rate": 0.001,
        "batch_size": 2,
        "resolution": 64,
        "optimizer": "adamw",
        "preprocessing_captioning_strategy": "description",
    }


@dataclass
class ImageServer:
    url: str
    folder: Path

    def serve(self, name: str, content: bytes) -> str:
        (self.folder / name).write_bytes(content)
        return f"{self.url}/{name}"


@pytest.fixture
def image_server(tmp_path: Path, settings) -> Iterator[ImageServer]:
    """A real HTTP server on loopback serving files from a folder (`serve` puts one there).

    Loopback is a private address, so this fixture also allows private hosts for image URLs; the
    tests of the refusal turn that back off.
    """
    import functools
    import http.server
    import threading

    folder = tmp_path / "served"
    folder.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            if self.path.startswith("/redirect-to-"):
                self.send_response(302)
                self.send_header("Location", "/" + self.path.removeprefix("/redirect-to-"))
                self.end_headers()
                return
            super().do_GET()

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            return None  # a client that hangs up early (the size limit) is expected here

    server = Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.IMAGE_URL_ALLOW_PRIVATE_HOSTS = True
    try:
        yield ImageServer(url=f"http://127.0.0.1:{server.server_address[1]}", folder=folder)
    finally:
        server.shutdown()
        server.server_close()


class TinyModels(dict[str, Path]):
    """A tiny model of each family, built the first time a test asks for it (once per session): a test
    of one family does not wait for all eight to be built."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> Path:
        self[family] = build_tiny_model(family, self.root / f"tiny-{family}")
        return self[family]


@pytest.fixture(scope="session")
def tiny_models(base_models_root: Path, tiny_sd15: Path) -> dict[str, Path]:
    """A tiny model of every family (tiny_sd15's for SD 1.5), built on first use."""
    models = TinyModels(base_models_root)
    models["sd15"] = tiny_sd15
    return models


@pytest.fixture
def fixed_signing_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signed URLs made during the test carry one fixed second (TimestampSigner's timestamp), so two serializations
    made a second apart compare equal when the rows do. Expiry checks read the real clock: not for those tests."""
    from django.core import signing

    monkeypatch.setattr(signing.TimestampSigner, "timestamp", lambda self: signing.b62_encode(1_800_000_000))
