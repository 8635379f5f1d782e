"""The README as a user reads it: its parameter table matches what the API accepts, and its seed-002
walkthrough runs as written against the demo's tiny base model (bodies taken from the README itself)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from contract.parameters import PARAMETERS, markdown_table
from models_app.models import GenerationJob, TrainingTask
from tests.factories import TeamFactory
from tests.helpers import api_client_for
from training.generation import run_generation_job
from training.runner import run_training_task

README = (Path(settings.BASE_DIR) / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n### ", start + len(title))
    return README[start : end if end != -1 else None]


def parameter_table() -> list[str]:
    return [line for line in section("### Parameters").splitlines() if line.startswith("| `")]


def test_the_parameter_table_documents_exactly_the_accepted_parameters() -> None:
    rows = parameter_table()
    named = {name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row.split("|")[1])}
    mentioned = {name for row in rows for name in re.findall(r"`([a-z_0-9]+)`", row)}
    assert named <= set(PARAMETERS), f"documented but refused: {sorted(named - set(PARAMETERS))}"
    assert set(PARAMETERS) <= mentioned, f"accepted but undocumented: {sorted(set(PARAMETERS) - mentioned)}"


def test_the_parameter_table_is_the_one_the_code_reads() -> None:
    """Defaults, ranges and meanings are written once, in contract/parameters.py; the README shows that table."""
    assert markdown_table() in section("### Parameters"), (
        "README's parameter table differs from contract/parameters.py; regenerate it with "
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
