"""A plain staff member opens the admin and finds the training dashboard, in a real headless Chromium at
1440x900: what runs (kept live), the queue in claim order, the failures with their reason, the workers
and their leases, their own teams' only; and no list page of the console is wider than the window.

The tasks are written in their states directly (no training runs). Screenshots go under test-artifacts/,
and the dashboard's also to docs/screenshots/dashboard.png (the README shows it).
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from models_app.models import Team, TrainingTask
from models_app.services.accounts import staff_user_create
from tests.factories import ModelFactory, TeamFactory
from tests.helpers import HANG_GUARD

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(django_settings.BASE_DIR) / "test-artifacts"
DOCS_SCREENSHOT = Path(django_settings.BASE_DIR) / "docs" / "screenshots" / "dashboard.png"

try:
    import playwright.sync_api  # noqa: F401

    PLAYWRIGHT = True
except ImportError:
    PLAYWRIGHT = False

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(not PLAYWRIGHT, reason="Playwright is not installed (pip install playwright)"),
    # As tests/browser/test_admin_console.py: the browser runs once per `make test`, in the PostgreSQL pass.
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL"), reason="runs in the PostgreSQL pass (set DATABASE_URL to run it alone)"
    ),
]

NO_OVERFLOW = "document.documentElement.scrollWidth <= window.innerWidth"
LIST_FITS = "document.getElementById('result_list').scrollWidth <= document.querySelector('.results').clientWidth"
LONG_NAME = "Autumn catalogue, knitwear on linen backgrounds, studio light, second shoot with the new photographer"


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls of the test are still sync.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        try:
            yield page
        finally:
            browser.close()
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def task(team: Team, name: str, status: str, *, age_minutes: int = 0, **fields: Any) -> TrainingTask:
    model = ModelFactory(team=team, name=name)
    row = TrainingTask.objects.create(
        team=team, model=model, trigger_word="zxq", base_model_path="flux-dev", status=status, **fields
    )
    TrainingTask.objects.filter(pk=row.pk).update(created_at=timezone.now() - timedelta(minutes=age_minutes))
    return row


def running(team: Team, name: str, worker: str, *, lease_seconds: int, **fields: Any) -> TrainingTask:
    now = timezone.now()
    return task(
        team, name, fields.pop("status", TrainingTask.Status.TRAINING), age_minutes=40, worker_id=worker,
        attempt_count=1, started_at=now - timedelta(minutes=20), lease_expires_at=now + timedelta(seconds=lease_seconds),
        **fields,
    )  # fmt: skip


def test_the_dashboard_shows_a_staff_member_their_teams_trainings_live(browser_page, live_server) -> None:
    page = browser_page
    team = TeamFactory(name="Studio")
    user = staff_user_create(username="lead", password="a long browser password", team=team)
    assert not user.is_superuser and not user.user_permissions.exists()
    other = TeamFactory(name="Studio")  # the same name, another team: none of its work is shown

    live = running(team, "Portrait LoRA, Mira", "gpu-box-1:gpu0:4242:a1b2c3d4", lease_seconds=240,
                   current_step=504, total_steps=1200, progress=42.0, loss=0.08731, eta_seconds=3900)  # fmt: skip
    running(team, LONG_NAME, "gpu-box-2:gpu1:977:0badf00d", lease_seconds=-150,
            status=TrainingTask.Status.PREPROCESSING, preprocessing_stage="caching", total_steps=2000)  # fmt: skip
    running(other, "Their product shots", "gpu-box-3:gpu0:51:ffff0000", lease_seconds=240)
    pending = TrainingTask.Status.PENDING
    task(team, "Style: ink wash", pending, priority=1, age_minutes=30)
    task(team, "Sneaker packshots", pending, priority=3, age_minutes=2)
    task(team, "Retried: ceramics", pending, priority=1, age_minutes=50, attempt_count=1, failure_reason="worker_lost")
    task(other, "Their urgent run", pending, priority=3, age_minutes=5)
    task(team, "Watch faces", TrainingTask.Status.FAILED, age_minutes=90, failure_reason="out_of_memory",
         attempt_count=1, completed_at=timezone.now() - timedelta(minutes=12),
         error_message="CUDA out of memory: tried to allocate 2.25 GiB at batch size 4, resolution 1024")  # fmt: skip
    task(team, "Logo set", TrainingTask.Status.FAILED, age_minutes=200, failure_reason="bad_input", attempt_count=1,
         completed_at=timezone.now() - timedelta(hours=2), error_message="image 7 (logo-07.png) is not a PNG")  # fmt: skip

    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "lead")
    page.fill("#id_password", "a long browser password")
    with page.expect_navigation():
        page.click("input[type=submit]")
    assert page.url == f"{live_server.url}/admin/"
    board = page.locator("#board")
    assert board.is_visible()
    text = board.inner_text()
    assert "Their" not in text and "gpu-box-3" not in text and other.public_id not in page.content()
    assert "your teams only" in text

    # What runs: step / total, loss, ETA, and each worker with what it holds; the lost lease said plainly.
    row = page.locator(f'#board-running tr[data-task="{live.pk}"]')
    assert row.locator('[data-field="current_step"]').inner_text() == "504"
    assert row.locator('[data-field="total_steps"]').inner_text() == "1200"
    assert row.locator('[data-field="loss"]').inner_text() == "0.0873"
    assert row.locator('[data-field="eta"]').inner_text() == "1 h 5 min"
    assert page.locator("#board-running tbody tr").count() == 2
    workers = page.locator("#board-workers tbody tr")
    assert workers.count() == 2
    assert "gpu-box-1 · gpu0" in workers.nth(0).inner_text() and "Portrait LoRA, Mira" in workers.nth(0).inner_text()
    lost = page.locator("#board-workers tr.board-lease-lost")
    assert lost.count() == 1 and "gpu-box-2 · gpu1" in lost.inner_text() and "LEASE EXPIRED" in lost.inner_text()
    # A long name is cut to fit, and whole in its title.
    clipped = page.locator(f'#board-running .board-clip[title^="{LONG_NAME}"]')
    assert clipped.count() == 1
    assert clipped.evaluate("cell => cell.scrollWidth > cell.clientWidth")

    # The queue in the order a worker takes it; their urgent task goes first, so ours start at 2.
    queue = page.locator("#board-queue tbody tr")
    assert [queue.nth(i).locator("a").inner_text() for i in range(3)] == [
        "Sneaker packshots", "Retried: ceramics", "Style: ink wash"]  # fmt: skip
    assert page.locator("#board-queue .board-position").all_inner_texts() == ["2", "3", "4"]
    assert "retry: attempt 1 of 3 ended (Worker lost)" in queue.nth(1).inner_text()

    # The failures with their reason.
    failures = page.locator("#board-failures tbody tr")
    assert failures.count() == 2
    assert "Out of GPU memory" in failures.nth(0).inner_text() and "CUDA out of memory" in failures.nth(0).inner_text()
    assert "Bad dataset or configuration" in failures.nth(1).inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-01.png"), full_page=True)
    assert page.evaluate(NO_OVERFLOW)
    DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ARTIFACTS / "dashboard-01.png", DOCS_SCREENSHOT)

    # The running rows follow the worker's progress without a reload...
    page.evaluate("window.notReloaded = true")
    TrainingTask.objects.filter(pk=live.pk).update(current_step=700, progress=58.3, loss=0.0712, eta_seconds=1500)
    page.wait_for_function(
        f"""document.querySelector('#board-running tr[data-task="{live.pk}"] [data-field="current_step"]')
            ?.textContent === '700'""",
        timeout=HANG_GUARD * 1000,
    )  # a ceiling against a hang, not a measure
    assert row.locator('[data-field="eta"]').inner_text() == "25 min"
    assert row.locator('[data-field="loss"]').inner_text() == "0.0712"
    assert page.evaluate("window.notReloaded === true")
    # ...and the page reloads itself when rows come or go: the task finishes, a new one is queued.
    TrainingTask.objects.filter(pk=live.pk).update(
        status=TrainingTask.Status.COMPLETED, completed_at=timezone.now(), lease_expires_at=None
    )
    task(team, "Fresh in the queue", pending, priority=2)
    page.wait_for_selector("#board-queue >> text=Fresh in the queue", timeout=HANG_GUARD * 1000)
    assert page.locator("#board-running tbody tr").count() == 1
    assert page.locator("#board-queue .board-position").all_inner_texts() == ["2", "3", "4", "5"]
    page.screenshot(path=str(ARTIFACTS / "dashboard-02-after-changes.png"), full_page=True)

    # No list page of the console is wider than the window, long names and ids included.
    for name, changelist in (("models", "model"), ("tasks", "trainingtask")):
        page.goto(f"{live_server.url}/admin/models_app/{changelist}/")
        assert page.locator("#result_list tbody tr").count() >= 6
        assert page.evaluate(NO_OVERFLOW), f"the {name} list is wider than the window"
        # Nor wider than its own box (which would scroll it sideways, hiding columns).
        assert page.evaluate(LIST_FITS), f"the {name} list is wider than its box"
        cut = page.locator(f'#result_list .console-clip:not(.console-detail)[title^="{LONG_NAME}"]')
        assert cut.count() == 1 and cut.evaluate("cell => cell.scrollWidth > cell.clientWidth")
        assert other.public_id not in page.content()
        page.screenshot(path=str(ARTIFACTS / f"dashboard-03-{name}-list.png"), full_page=True)
