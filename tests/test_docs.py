"""The documentation as a user reads it (docs/, rendered by config/docs_hooks.py as the site is): its parameter
and family tables are the code's own, the parameter table matches what the API accepts, its seed-002
walkthrough runs as written against the demo's tiny base model (bodies taken from the page itself), the
README stays a short front page, and the site builds in strict mode."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from config.docs_hooks import render
from contract.families import FAMILIES
from contract.families import markdown_table as families_table
from contract.parameters import PARAMETERS, markdown_table
from models_app.models import GenerationJob, TrainingTask
from tests.factories import TeamFactory
from tests.helpers import api_client_for
from training.generation import run_generation_job
from training.runner import run_training_task

DOCS = Path(settings.BASE_DIR) / "docs"


def page(name: str) -> str:
    """A docs page as the site renders it: the generated tables written in."""
    return render((DOCS / name).read_text(encoding="utf-8"))


def section(title: str) -> str:
    """Kept for the callers that name a section by its old README heading: the page that now holds it."""
    return page(PAGES[title])


PAGES = {
    "### Parameters": "training/parameters.md",
    "### Models and training (seed 002)": "api/seed-002-models.md",
}


def parameter_table() -> list[str]:
    return [line for line in page("training/parameters.md").splitlines() if line.startswith("| `")]


def test_the_parameter_table_documents_exactly_the_accepted_parameters() -> None:
    rows = parameter_table()
    named = {name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])}
    mentioned = {name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row)}
    assert named <= set(PARAMETERS), f"documented but refused: {sorted(named - set(PARAMETERS))}"
    assert set(PARAMETERS) <= mentioned, f"accepted but undocumented: {sorted(set(PARAMETERS) - mentioned)}"


def test_the_parameter_table_is_the_one_the_code_reads() -> None:
    """Defaults, ranges and meanings are written once, in contract/parameters.py; the docs show that table."""
    assert markdown_table() in section("### Parameters"), (
        "the parameters page does not show contract/parameters.py's table; put its marker back: "
        '`python -c "from contract.parameters import markdown_table; print(markdown_table())"`'
    )


def bodies(text: str) -> list[str]:
    """The JSON bodies of the `curl ... -d '...'` commands, in order, as the shell would pass them."""
    found = []
    for match in re.finditer(r"-d '(.*?)'(?=\s*(?:#|$))", text, flags=re.S | re.M):
        found.append(match.group(1))
    return found


@pytest.mark.django_db
@pytest.mark.slow
def test_the_seed_002_walkthrough_runs_as_written_on_the_demo_base_model(tiny_sd15: Path, tmp_path: Path) -> None:
    walkthrough = section("### Models and training (seed 002)")
    create, dry_run, cancel, generate = bodies(walkthrough)
    team = TeamFactory()
    client = api_client_for(team)

    # A shorter run than the README's 300 steps keeps the suite quick; everything else is as written.
    created = client.post(
        "/v1/models", data=create.replace('"steps": 300', '"steps": 12'), content_type="application/json"
    )
    assert created.status_code == 201, created.content
    model_id = created.json()["result"]["id"]

    call_command("sample_images", "--out", str(tmp_path / "samples"), stdout=io.StringIO())
    for image in sorted((tmp_path / "samples").glob("sample*.jpg")):
        with open(image, "rb") as handle:
            answer = client.post(
                f"/v1/models/{model_id}/training-images",
                {"file": handle, "description": image.with_suffix(".txt").read_text().strip()},
            )
        assert answer.status_code in (200, 201), answer.content

    quote = client.put(f"/v1/models/{model_id}/train?dryRun=true", data=dry_run, content_type="application/json")
    assert quote.status_code == 200 and quote.json()["result"]["canStart"], quote.content
    assert quote.json()["result"]["estimate"]["seconds_basis"].startswith("reference:")

    started = client.get(f"/v1/models/{model_id}/train").json()
    assert started["result"] == "Training triggered" and started["creditsReserved"] is None
    assert run_training_task(started["taskId"]) == TrainingTask.Status.COMPLETED
    assert cancel == '{"action": "cancel"}'  # documented for a running training; this one has finished

    job = client.post("/v1/images/generation", data=generate.replace("'$M'", model_id), content_type="application/json")
    assert job.status_code == 200, job.content
    job_id = job.json()["result"]["jobId"]
    assert run_generation_job(job_id) == GenerationJob.Status.COMPLETED
    shown = client.get(f"/v1/jobs/{job_id}").json()["result"]
    assert shown["status"] == "completed" and len(shown["images"]) == 2
    assert (shown["width"], shown["height"]) == (64, 64)


def test_the_family_table_is_the_families_records_and_agrees_with_the_engine() -> None:
    """The families page and the docs' home show the table generated from contract/families.py; each row's
    claims (text-encoder LoRA, edit pairs and their sources) are the engine family's own."""
    from training.engine.families import family_class

    table = families_table()
    assert table in page("training/families.md") and table in page("index.md")
    for facts in FAMILIES:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{facts.key}`"))
        engine = family_class(facts.key)
        assert ("text-encoder LoRA" in row) == bool(engine.text_encoder_tokenizers), facts.key
        assert ("type `edit`" in row) == facts.trains_pairs, facts.key
        assert all(f"`{pipeline}`" in row for pipeline in facts.pipelines), facts.key


def test_an_unknown_table_generator_is_an_error_not_a_silent_gap() -> None:
    with pytest.raises(ValueError, match=r"unknown table generator 'os\.getcwd'"):
        render("text\n<!-- generated: os.getcwd -->\n")


def test_the_readme_is_a_short_front_page_whose_links_resolve() -> None:
    readme = (Path(settings.BASE_DIR) / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 250
    for target in re.findall(r"\]\(((?:docs/)[^)#]+)(?:#[^)]*)?\)", readme):
        assert (Path(settings.BASE_DIR) / target).is_file(), f"README links to a missing page: {target}"


@pytest.mark.slow
@pytest.mark.engine  # no database: once, in the SQLite pass
def test_the_documentation_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """A broken link, a missing page or an anchor that does not exist fails the build (mkdocs.yml: strict)."""
    import subprocess
    import sys

    mkdocs = Path(sys.executable).with_name("mkdocs")
    built = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "StableDiffusionPipeline" in home  # the generated family table is in the built page
