"""A staff member curates a dataset and trains a model in the admin, in a real headless Chromium.

Screenshots are saved under test-artifacts/ (the CI keeps them). Skipped, with the reason, only where
Chromium or Playwright is not installed; `.ci/run` installs both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from models_app.models import Model, TrainingTask
from models_app.services.accounts import staff_user_create
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import HANG_GUARD, png, start_cluster, stop_cluster

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(django_settings.BASE_DIR) / "test-artifacts"

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
    # The pages do not depend on the database: one browser run per `make test`, in the PostgreSQL pass
    # (production's database), keeps CI's time down. DATABASE_URL=... pytest tests/browser runs it alone.
    pytest.mark.skipif(
        not os.environ.get("DATABASE_URL"), reason="runs in the PostgreSQL pass (set DATABASE_URL to run it alone)"
    ),
]


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
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            yield page
        finally:
            browser.close()
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def test_curate_and_train_from_the_admin(browser_page, live_server, settings, tiny_sd15: Path, tmp_path: Path) -> None:
    page = browser_page
    # A plain staff member, made as staff make one (`manage.py user create`): their role in the team is
    # their only grant; no superuser, no permission set by hand.
    team = TeamFactory(name="Browser studio")
    user = staff_user_create(username="curator", password="a long browser password", team=team)
    assert not user.is_superuser and not user.user_permissions.exists()
    model = ModelFactory(
        team=team,
        name="Shapes for the browser",
        parameters={"steps": 30, "rank": 4, "learning_rate": 0.001, "batch_size": 2, "resolution": 64,
                    "optimizer": "adamw", "sample_every": 15, "sample_steps": 2,
                    "sample_prompts": ["zxq, a red circle"]},
    )  # fmt: skip
    add_images(model, 10)
    uploads = []
    for index, colour in enumerate(("crimson", "teal")):
        path = tmp_path / f"upload-{index}.png"
        path.write_bytes(png((160, 120), colour))
        uploads.append(str(path))

    cluster = start_cluster(settings, "browser-gpu")
    try:
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", "curator")
        page.fill("#id_password", "a long browser password")
        page.click("input[type=submit]")
        page.goto(f"{live_server.url}/admin/models_app/model/{model.pk}/change/")
        assert "a training needs 12 to 20 images" in page.inner_text("#workspace")
        page.screenshot(path=str(ARTIFACTS / "01-dataset-10-images.png"), full_page=True)

        # Upload two images with the page's own upload control.
        with page.expect_navigation():
            page.set_input_files("#upload-input", uploads)
        assert page.inner_text("#image-count") == "12 images"
        assert model.training_images.count() == 12

        # Edit a caption in place.
        caption = page.locator(".ws-card textarea.caption").first
        caption.fill("zxq, a crimson rectangle, edited in the browser")
        caption.dispatch_event("change")
        page.locator(".ws-card .ws-saved").first.wait_for(state="visible")
        page.wait_for_function("document.querySelector('.ws-card .ws-saved').textContent === 'saved'")
        assert model.training_images.filter(description="zxq, a crimson rectangle, edited in the browser").exists()
        page.screenshot(path=str(ARTIFACTS / "02-dataset-ready.png"), full_page=True)

        # Start the training and watch it reach 100 percent on the task page.
        with page.expect_navigation():
            page.click("#start-training")
        assert "/trainingtask/" in page.url
        # The page refreshes itself, and reloads once at the end to show the weights' links.
        page.wait_for_function(
            "document.getElementById('live-percent')?.textContent === '100'", timeout=HANG_GUARD * 1000
        )  # a ceiling against a hang, not a measure
        page.wait_for_function(
            "document.getElementById('live-status')?.textContent === 'COMPLETED'", timeout=HANG_GUARD * 1000
        )
        page.wait_for_selector("#weights-link", timeout=HANG_GUARD * 1000)
        page.wait_for_selector("#samples img")
        page.screenshot(path=str(ARTIFACTS / "03-training-complete.png"), full_page=True)
        assert TrainingTask.objects.get(model=model).status == TrainingTask.Status.COMPLETED
        assert Model.objects.get(pk=model.pk).status == Model.Status.READY
        # A finished task offers no Cancel, and its page agrees with itself.
        assert page.locator("#live-cancel").is_hidden() and page.locator("#live-eta-box").is_hidden()
        assert page.inner_text(".field-status .readonly") == "Completed"

        # Open a sample image.
        sample_url = page.get_attribute("#samples a", "href")
        response = page.goto(f"{live_server.url}{sample_url}" if sample_url.startswith("/") else sample_url)
        assert response is not None and response.status == 200
        assert response.headers["content-type"] == "image/png"
        page.screenshot(path=str(ARTIFACTS / "04-sample.png"))

        # Cancel a queued training from its page: a confirmation first, then the whole page says CANCELLED.
        queued = ModelFactory(team=team, name="Queued for the browser", parameters={"steps": 30, "resolution": 64})
        add_images(queued, 12)
        stop_cluster(cluster)  # no worker: it stays queued
        from models_app.services.training import training_start

        task = training_start(model=queued)
        page.goto(f"{live_server.url}/admin/models_app/trainingtask/{task.pk}/change/")
        page.wait_for_function("document.getElementById('live-status')?.textContent === 'PENDING'")
        assert page.locator("#live-priority-box").is_visible() and page.locator("#live-cancel").is_visible()
        page.once("dialog", lambda dialog: dialog.dismiss())  # changing one's mind keeps it queued
        page.click("#live-cancel")
        assert TrainingTask.objects.get(pk=task.pk).status == TrainingTask.Status.PENDING
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#live-cancel")
        page.wait_for_function("document.getElementById('live-status')?.textContent === 'CANCELLED'")
        assert page.locator("#live-cancel").is_hidden() and page.locator("#live-priority-box").is_hidden()
        assert page.locator("#live-eta-box").is_hidden()
        assert page.inner_text(".field-status .readonly") == "Cancelled"
        assert "PENDING" not in page.title() and "PENDING" not in page.inner_text("div.breadcrumbs")
        page.screenshot(path=str(ARTIFACTS / "05-cancelled.png"), full_page=True)
        assert TrainingTask.objects.get(pk=task.pk).status == TrainingTask.Status.CANCELLED
    finally:
        stop_cluster(cluster)
