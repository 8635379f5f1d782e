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


def wait_until(page, script: str) -> None:
    page.wait_for_function(script, timeout=HANG_GUARD * 1000)  # a ceiling against a hang, not a measure


def shown_captions(page) -> dict[str, str]:
    return dict(
        page.eval_on_selector_all(
            ".ws-card", "cards => cards.map(c => [c.dataset.id, c.querySelector('.caption').value])"
        )
    )


def assert_consistent(page, model: Model) -> None:
    """The page shows what is stored: every caption, and a "no caption" flag exactly where one is empty
    (the model trains on its captions: strategy `description`)."""
    stored = {image.public_id: image.description for image in model.training_images.select_related("asset")}
    assert shown_captions(page) == stored
    flagged = page.eval_on_selector_all(
        ".ws-card",
        "cards => cards.filter(c => c.querySelector('.flags').textContent.includes('no caption')).map(c => c.dataset.id)",
    )
    assert set(flagged) == {image_id for image_id, caption in stored.items() if not caption.strip()}


def use_the_caption_tools(page, model: Model) -> None:
    """Thumbnails, the lightbox, a flag cleared by a caption, the trigger-word tool, find/replace with its
    preview, and auto-caption disabled with its reason; the page agrees with the database after each."""
    # Generated thumbnails, not the originals scaled down: each one loaded, no wider than its 384 px box.
    wait_until(page, "[...document.querySelectorAll('.ws-card img')].every(i => i.complete && i.naturalWidth > 0)")
    sizes = page.eval_on_selector_all(".ws-card img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    assert all(width <= 384 and height <= 384 for width, height in sizes), sizes
    assert sizes.count([384, 288]) == 2  # the two 1600 x 1200 uploads, whole, in their box
    sources = page.eval_on_selector_all(".ws-card img", "imgs => imgs.map(i => i.getAttribute('src'))")
    assert all("/thumbnails/" in src or src.endswith("/thumbnail/") for src in sources), sources

    # The lightbox: a thumbnail opens it large with its caption; arrows move, Esc closes.
    page.click(".ws-card .ws-thumb >> nth=0")
    assert page.locator("#lightbox").is_visible()
    assert page.inner_text("#lightbox-position") == f"1 / {model.training_images.count()}"
    first = model.training_images.order_by("created_at", "id").first()
    assert page.inner_text("#lightbox-name") == first.name and page.inner_text("#lightbox-caption") == first.description
    wait_until(page, "document.getElementById('lightbox-image').currentSrc.includes('/media/assets/')")  # the original
    page.keyboard.press("ArrowRight")
    assert page.inner_text("#lightbox-position").startswith("2 / ")
    page.screenshot(path=str(ARTIFACTS / "02a-lightbox.png"))
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")  # wraps to the last image
    assert page.inner_text("#lightbox-position") == f"{model.training_images.count()} / {model.training_images.count()}"
    page.keyboard.press("Escape")
    assert page.locator("#lightbox").is_hidden()

    # The uploads came without captions: flagged, and the flag goes once a caption is saved.
    assert_consistent(page, model)
    empty = [image for image in model.training_images.select_related("asset") if not image.description]
    assert len(empty) == 2
    card = page.locator(f'.ws-card[data-id="{empty[0].public_id}"]')
    card.locator("textarea.caption").fill("a crimson rectangle")
    card.locator("textarea.caption").blur()
    wait_until(
        page, f"document.querySelector('.ws-card[data-id=\"{empty[0].public_id}\"] .ws-saved').textContent === 'saved'"
    )
    assert "no caption" not in card.locator(".flags").inner_text()
    assert_consistent(page, model)

    # The trigger word, added to every caption that lacks it (the one just written).
    assert page.inner_text("#lacking-count") == "1"
    page.click("#add-trigger")
    wait_until(page, "document.getElementById('trigger-result').textContent === 'added to 1 caption(s)'")
    assert model.training_images.get(pk=empty[0].pk).description == "zxq, a crimson rectangle"
    assert page.is_disabled("#add-trigger") and page.inner_text("#lacking-count") == "0"
    assert_consistent(page, model)

    # Find and replace: the preview counts, nothing is written until Replace.
    before = shown_captions(page)
    page.fill("#find-text", "rectangle")
    page.fill("#replace-text", "box")
    assert page.is_disabled("#replace-apply")
    page.click("#replace-preview")
    matching = [caption for caption in before.values() if "rectangle" in caption]
    assert matching
    wait_until(page, "document.getElementById('replace-result').textContent.endsWith('caption(s) would change')")
    assert page.inner_text("#replace-result").endswith(f"in {len(matching)} caption(s) would change")
    assert shown_captions(page) == before and model.training_images.filter(
        description__contains="rectangle"
    ).count() == len(matching)
    page.click("#replace-apply")
    wait_until(page, "document.getElementById('replace-result').textContent.startsWith('replaced in')")
    assert not model.training_images.filter(description__contains="rectangle").exists()
    assert model.training_images.filter(description__contains="box").count() == len(matching)
    assert_consistent(page, model)

    # No captioning model on this server: the button says why it is disabled.
    assert page.is_disabled("#autocaption")
    assert "Not available: no captioning model is configured" in page.inner_text("#autocaption-hint")


def edit_pairs(page, live_server, model: Model) -> None:
    """An edit model's pairs: images chosen by thumbnail in the picker, the instruction typed in place;
    each change saved as the whole list, and the page agrees with the database."""
    page.goto(f"{live_server.url}/admin/models_app/model/{model.pk}/change/")
    images = list(model.training_images.select_related("asset").order_by("created_at", "id"))
    page.click("#add-pair")
    assert page.locator("#pair-picker").is_visible() and page.inner_text("#picker-side") == "source"
    wait_until(page, "[...document.querySelectorAll('.picker-item img')].every(i => i.complete && i.naturalWidth > 0)")
    page.click(f'.picker-item[data-id="{images[0].public_id}"]')
    assert page.inner_text("#picker-side") == "target"
    assert page.is_disabled(f'.picker-item[data-id="{images[0].public_id}"]')  # never the source itself
    page.click(f'.picker-item[data-id="{images[1].public_id}"]')
    wait_until(page, "document.getElementById('ws-save-status').textContent === 'All changes saved'")
    assert [
        (p.source.public_id, p.target.public_id) for p in model.pairs.select_related("source__asset", "target__asset")
    ] == [(images[0].public_id, images[1].public_id)]
    row = page.locator(".ws-pair").first
    assert row.locator(".pair-flag").is_visible()  # no instruction yet
    previews = row.locator(".pair-slot img").evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))")
    assert len(previews) == 2 and all(src for src in previews)
    row.locator(".pair-instruction").fill("turn it into the night version")
    row.locator(".pair-instruction").blur()
    wait_until(page, "document.querySelector('.ws-pair .pair-flag').hidden")
    assert row.locator(".pair-flag").is_hidden()
    assert model.pairs.get().instruction == "turn it into the night version"
    # Another target, picked by its thumbnail.
    row.locator('.pair-slot[data-side="target"]').click()
    page.click(f'.picker-item[data-id="{images[2].public_id}"]')
    wait_until(
        page,
        f"document.querySelector('.ws-pair .pair-slot[data-side=\"target\"] .slot-label').textContent === 'target: {images[2].name}'",
    )
    pair = model.pairs.select_related("target__asset").get()
    assert pair.target.public_id == images[2].public_id and pair.instruction == "turn it into the night version"
    # A further source (FLUX.2 conditions on several): images the pair holds cannot be picked again.
    row.locator(".add-source").click()
    assert page.inner_text("#picker-side") == "further source"
    assert all(page.is_disabled(f'.picker-item[data-id="{images[i].public_id}"]') for i in (0, 2))
    page.click(f'.picker-item[data-id="{images[3].public_id}"]')
    wait_until(page, "document.querySelectorAll('.ws-pair .pair-extra img').length === 1")
    wait_until(page, "document.getElementById('ws-save-status').textContent === 'All changes saved'")
    assert model.pairs.get().extra_source_public_ids == [images[3].public_id]
    row.locator(".pair-extra").click()  # a click on it removes it
    wait_until(page, "document.querySelectorAll('.ws-pair .pair-extra').length === 0")
    wait_until(page, "document.getElementById('ws-save-status').textContent === 'All changes saved'")
    assert model.pairs.get().extra_source_public_ids == []
    row.locator(".add-source").click()
    page.click(f'.picker-item[data-id="{images[3].public_id}"]')
    wait_until(page, "document.querySelectorAll('.ws-pair .pair-extra img').length === 1")
    wait_until(page, "document.getElementById('ws-save-status').textContent === 'All changes saved'")
    page.locator("#pairs").screenshot(path=str(ARTIFACTS / "03a-pairs-editor.png"))
    page.reload()  # what was saved is what the page shows again
    assert page.input_value(".ws-pair .pair-instruction") == "turn it into the night version"
    assert page.locator(".ws-pair").count() == 1 and page.locator(".ws-pair .pair-extra").count() == 1


def test_curate_and_train_from_the_admin(browser_page, live_server, settings, tiny_sd15: Path, tmp_path: Path) -> None:
    page = browser_page
    script_errors: list[str] = []  # an error in any page's script fails the test
    page.on("pageerror", lambda error: script_errors.append(str(error)))
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
                    "sample_prompts": ["zxq, a red circle"], "preprocessing_captioning_strategy": "description"},
    )  # fmt: skip
    add_images(model, 10)
    uploads = []
    for index, colour in enumerate(("crimson", "teal")):
        path = tmp_path / f"upload-{index}.png"
        path.write_bytes(png((1600, 1200), colour))  # shown as a 384 x 288 thumbnail
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
        use_the_caption_tools(page, model)
        page.screenshot(path=str(ARTIFACTS / "02-dataset-ready.png"), full_page=True)
        page.locator("#workspace").screenshot(
            path=str(ARTIFACTS / "02-workspace.png")
        )  # docs/screenshots/workspace.png

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

        # An edit model's pairs, picked by thumbnail.
        edit_model = ModelFactory(team=team, name="Day to night", type=Model.Type.EDIT)
        add_images(edit_model, 4, seed=3)
        edit_pairs(page, live_server, edit_model)

        # Cancel a queued training from its page: a confirmation first, then the whole page says CANCELLED.
        queued = ModelFactory(team=team, name="Queued for the browser", parameters={"steps": 30, "resolution": 64})
        add_images(queued, 12)
        stop_cluster(cluster)  # no worker: it stays queued
        from models_app.services.training import training_start

        task = training_start(model=queued)
        # Meanwhile, in a second tab, the model's own page: read-only under a banner that links the training.
        second = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
        second.add_cookies(page.context.cookies())  # the same signed-in staff member
        workspace = second.new_page()
        workspace.on("pageerror", lambda error: script_errors.append(str(error)))
        workspace.goto(f"{live_server.url}/admin/models_app/model/{queued.pk}/change/")
        assert workspace.locator("#ws-lock").is_visible() and "queued" in workspace.inner_text("#ws-lock-reason")
        assert workspace.get_attribute("#ws-lock-task", "href") == f"/admin/models_app/trainingtask/{task.pk}/change/"
        assert workspace.locator(".ws-card textarea.caption").first.evaluate("t => t.readOnly")
        for control in ("#start-training", "#add-trigger", "#find-text", "#upload-input", "#save-settings", "#id_name"):
            assert workspace.is_disabled(control), control
        assert workspace.is_enabled("#cancel-training") and workspace.locator(".ws-card .delete").first.is_hidden()
        workspace.screenshot(path=str(ARTIFACTS / "06-locked-while-queued.png"))
        workspace.evaluate("window.notReloaded = true")
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
        # The model's page saw the training end by itself: the banner goes and editing is back, no reload.
        wait_until(workspace, "document.getElementById('ws-lock').hidden")
        assert workspace.evaluate("window.notReloaded === true")
        assert not workspace.locator(".ws-card textarea.caption").first.evaluate("t => t.readOnly")
        assert workspace.is_enabled("#start-training") and workspace.is_enabled("#save-settings")
        assert workspace.is_disabled("#cancel-training") and workspace.locator(".ws-card .delete").first.is_visible()
        assert workspace.inner_text("#model-status") == "canceled"
        second.close()
        assert not script_errors, script_errors
    finally:
        stop_cluster(cluster)
