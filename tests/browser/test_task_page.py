"""A training task's page and a model's parameters form, in a real headless Chromium, as a plain staff member.

No training runs: the task, its loss, its validation loss and its samples (real PNG files) are written
as a worker would have left them. Screenshots are saved under test-artifacts/ (docs/screenshots/ holds
copies for the README). Skipped, with the reason, where Chromium or Playwright is not installed, and
outside the PostgreSQL pass (see test_admin_console.py).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile

from models_app.models import Model, TrainingSample, TrainingTask
from models_app.services.accounts import staff_user_create
from models_app.services.training import training_start
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import png

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

PROMPTS = ["zxq, a red circle", "zxq, a blue square on grass", "zxq at night"]
SAMPLE_STEPS = [0, 100, 200, 300]
# Each prompt's colour, reached step by step from the base model's grey (a sample is one real PNG).
TARGETS = [(200, 40, 40), (40, 70, 190), (30, 30, 60)]


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


@pytest.fixture
def staff_page(browser_page, live_server):
    """The browser signed in as a plain staff member: a `member` of one team, no superuser, no permission
    set by hand."""
    team = TeamFactory(name="Browser studio")
    user = staff_user_create(username="viewer", password="a long browser password", team=team)
    assert not user.is_superuser and not user.user_permissions.exists()
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "viewer")
    page.fill("#id_password", "a long browser password")
    page.click("input[type=submit]")
    page.team, page.base = team, live_server.url
    return page


def loss_curves(steps: int) -> tuple[list[list[float]], list[list[float]]]:
    """A believable run: a noisy falling loss with its smoothed curve ([step, loss, smoothed]), and a
    validation loss every 50 steps that levels off above it."""
    history, smoothed = [], None
    for step in range(1, steps + 1):
        loss = 0.11 + 0.25 * math.exp(-step / 70) + 0.035 * math.sin(step * 1.7) * math.cos(step * 0.31)
        smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss
        history.append([step, round(loss, 6), round(smoothed, 6)])
    validation = [[step, round(0.15 + 0.22 * math.exp(-step / 90), 6)] for step in range(0, steps + 1, 50)]
    return history, validation


def sample_png(prompt_index: int, step: int) -> bytes:
    share = step / SAMPLE_STEPS[-1]
    colour = tuple(round(128 + (target - 128) * share) for target in TARGETS[prompt_index])
    return png((96, 96), "#{:02x}{:02x}{:02x}".format(*colour))


def test_the_task_page_draws_the_loss_chart_with_axes_and_legend_and_the_samples_as_a_grid(
    staff_page, tiny_sd15: Path
) -> None:
    page = staff_page
    model = ModelFactory(team=page.team, name="Shapes", parameters={"steps": 300, "sample_prompts": PROMPTS})
    add_images(model, 12)
    task = training_start(model=model)  # no worker runs: the test writes what one would have reported
    history, validation = loss_curves(240)
    TrainingTask.objects.filter(pk=task.pk).update(
        status=TrainingTask.Status.TRAINING,
        progress=80.0,
        current_step=240,
        loss=history[-1][1],
        loss_history=history,
        logs="".join(
            f"step {step}/300 loss {loss:.4f} smoothed {smooth:.4f}\n" for step, loss, smooth in history[-12:]
        ),
        validation_history=validation,
    )
    Model.objects.filter(pk=model.pk).update(status=Model.Status.TRAINING)
    for step in SAMPLE_STEPS[:-1]:  # the last step's samples are not made yet: their cells stay empty
        for index, prompt in enumerate(PROMPTS):
            TrainingSample.objects.create(
                task=task, step=step, prompt=prompt, index=index, file=ContentFile(sample_png(index, step), "s.png")
            )

    page.goto(f"{page.base}/admin/models_app/trainingtask/{task.pk}/change/")
    chart = page.locator("#loss-chart")
    chart.locator(".legend").wait_for()
    # Axes: step on x, loss on y, each with tick labels that are numbers.
    assert chart.locator(".axis-x .axis-title").text_content() == "step"
    assert chart.locator(".axis-y .axis-title").text_content() == "loss"
    x_ticks = chart.locator(".axis-x .tick text").all_text_contents()  # SVG: text, not innerText
    y_ticks = chart.locator(".axis-y .tick text").all_text_contents()
    assert len(x_ticks) >= 3 and len(y_ticks) >= 3, (x_ticks, y_ticks)
    assert [float(label) for label in x_ticks] == sorted(float(label) for label in x_ticks)
    assert all(0 <= float(label) <= 240 for label in x_ticks)
    assert all(0.05 < float(label) < 0.45 for label in y_ticks), y_ticks
    # Three series, the smoothed loss drawn over the raw loss, and a legend naming each.
    assert chart.locator(".legend-item").all_text_contents() == ["loss", "smoothed loss", "validation loss"]
    order = chart.evaluate("svg => [...svg.querySelectorAll('.series')].map(g => g.getAttribute('class'))")
    assert order == ["series series-raw", "series series-smoothed", "series series-validation"]
    assert chart.locator(".series-validation circle").count() == len(validation)
    # Samples: a row per step, a column per prompt, a cell for each (the missing step's left empty).
    grid = page.locator("#sample-grid")
    assert grid.locator("thead th.prompt").all_text_contents() == PROMPTS
    assert grid.locator("tbody th").all_inner_texts() == ["0", "100", "200"]
    assert grid.locator("tbody td").count() == 3 * len(PROMPTS)
    assert grid.locator("tbody td img").count() == 3 * len(PROMPTS)
    page.wait_for_function(
        "[...document.querySelectorAll('#sample-grid img')].every(img => img.complete && img.naturalWidth === 96)"
    )
    # The page refreshes itself: a new step's samples add a row.
    for index, prompt in enumerate(PROMPTS):
        TrainingSample.objects.create(
            task=task, step=300, prompt=prompt, index=index, file=ContentFile(sample_png(index, 300), "s.png")
        )
    page.wait_for_function("document.querySelectorAll('#sample-grid tbody tr').length === 4")
    assert grid.locator("tbody td img").count() == len(SAMPLE_STEPS) * len(PROMPTS)
    page.wait_for_function(
        "[...document.querySelectorAll('#sample-grid img')].every(img => img.complete && img.naturalWidth === 96)"
    )
    page.screenshot(path=str(ARTIFACTS / "task-page.png"), full_page=True)

    # A click enlarges a sample over the page; Escape closes it.
    grid.locator("tbody tr").nth(1).locator("td a").nth(2).click()
    zoom = page.locator("#sample-zoom")
    zoom.wait_for()
    assert zoom.locator("figcaption").inner_text() == f"step 100 · {PROMPTS[2]}"
    page.screenshot(path=str(ARTIFACTS / "task-page-sample-enlarged.png"))
    page.keyboard.press("Escape")
    zoom.wait_for(state="detached")


def test_the_parameters_form_refuses_on_the_field_and_stores_overrides_only(staff_page) -> None:
    page = staff_page
    model = ModelFactory(team=page.team, name="Portraits", parameters={"steps": 1500, "sample_prompts": PROMPTS[:2]})
    page.goto(f"{page.base}/admin/models_app/model/{model.pk}/change/")
    # The Training section is open; the others fold away until they hold an override.
    assert page.locator("#id_parameter_rank").is_visible()
    assert not page.locator("#id_parameter_ema").is_visible()
    assert page.input_value("#id_parameter_steps") == "1500"
    assert page.get_attribute("#id_parameter_rank", "placeholder") == "16"

    page.fill("#id_parameter_rank", "0")
    page.locator("summary", has_text="Parameters: Weight averaging").click()
    page.select_option("#id_parameter_ema", "true")
    page.fill("#id_parameter_ema_decay", "0.9995")
    with page.expect_navigation():
        page.click("input[name=_continue]")
    error = page.locator(".field-parameter_rank .errorlist")
    assert error.inner_text() == "rank must be at least 1; got 0"
    assert Model.objects.get(pk=model.pk).parameters == {"steps": 1500, "sample_prompts": PROMPTS[:2]}

    page.fill("#id_parameter_rank", "8")
    page.fill("#id_parameter_steps", "")  # cleared: back to the default
    with page.expect_navigation():
        page.click("input[name=_continue]")
    assert Model.objects.get(pk=model.pk).parameters == {
        "rank": 8,
        "ema": True,
        "ema_decay": 0.9995,
        "sample_prompts": PROMPTS[:2],
    }
    page.locator("summary", has_text="Effective parameters").click()
    effective = page.locator("#effective-parameters")
    assert "set on this model" in effective.locator("tr", has_text="ema_decay").inner_text()
    assert effective.locator("tr", has_text="steps").first.inner_text().split("\t")[1:] == ["1000", "default"]
    # The parameter sections, from the first to the last open one, for the README.
    page.evaluate("window.scrollTo(0, 0)")  # a box is measured from the viewport; the clip from the page's top
    first = page.locator("fieldset", has_text="Parameters: Training").first.bounding_box()
    last = page.locator("fieldset", has_text="Parameters: Weight averaging").first.bounding_box()
    assert first is not None and last is not None
    page.screenshot(
        path=str(ARTIFACTS / "parameters-form.png"),
        full_page=True,
        clip={"x": 0, "y": first["y"] - 10, "width": 1400, "height": last["y"] + last["height"] - first["y"] + 20},
    )
