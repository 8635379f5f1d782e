"""Each management command's success and failure paths."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from models_app.models import ApiKey, Membership, Project, Team, TrainingImage, TrainingTask
from models_app.services.accounts import api_key_create
from models_app.services.datasets import model_configure
from models_app.services.training import training_start
from tests.factories import ModelFactory, TeamFactory, add_images
from tests.helpers import png
from training.runner import run_training_task

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_team_project_member_and_apikey_commands() -> None:
    get_user_model().objects.create_user("ada")
    team_id = run("team", "create", "Studio", "--owner", "ada", "--max-parallel-trainings", "2").split("\t")[0]
    team = Team.objects.get(public_id=team_id)
    assert team.max_parallel_trainings == 2 and Membership.objects.get(team=team).role == "owner"
    assert Project.objects.get(public_id=run("team", "project", team_id, "Spring").split("\t")[0]).team == team
    get_user_model().objects.create_user("bo")
    assert "bo is admin of" in run("team", "member", team_id, "bo", "--role", "admin")

    token = run("apikey", "create", "--team-id", team_id, "--name", "ci").strip()
    key = ApiKey.objects.get(key=token.split(".")[0])
    assert key.team == team and key.name == "ci"
    listing = run("apikey", "list", "--team-id", team_id)
    assert key.key in listing and "active" in listing and token.split(".")[1] not in listing
    assert run("apikey", "revoke", token).strip() == f"{key.key} revoked"
    assert "revoked" in run("apikey", "list")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("team", "project", "team_nope", "X"), "team team_nope not found"),
        (("team", "create", "X", "--owner", "ghost"), "user 'ghost' not found"),
        (("team", "create", "  "), "a team needs a name"),
        (("apikey", "revoke", "key_nope"), "API key key_nope not found"),
        (("train", "start", "--model-id", "model_nope"), "model model_nope not found"),
        (("import_dataset", "/no/such/folder", "--model-id", "model_x"), "/no/such/folder is not a folder"),
        (("export_lora", "model_nope", "--out", "/tmp/x.safetensors"), "no model or training task model_nope"),
    ],
)
def test_commands_refuse_bad_input_in_one_line(args: tuple[str, ...], message: str) -> None:
    TeamFactory()
    with pytest.raises(CommandError, match=message):
        call_command(*args, stdout=io.StringIO(), stderr=io.StringIO())


def test_train_command_runs_every_tool_action(tiny_sd15: Path) -> None:
    model = ModelFactory()
    add_images(model, 12)
    ids = [image.public_id for image in model.training_images.select_related("asset")]
    assert json.loads(run("train", "update_image", "--model-id", model.public_id, "--training-image-id", ids[0],
                          "--image-data", '{"description": "first"}'))["status"] == "updated"  # fmt: skip
    pairs = json.dumps({"pairs": [{"source_id": ids[0], "target_id": ids[1], "instruction": "go"}]})
    assert json.loads(run("train", "set_pairs", "--model-id", model.public_id, "--image-data", pairs))["count"] == 1
    estimate = json.loads(
        run("train", "configure", "--model-id", model.public_id, "--config", '{"steps": 50}', "--dry-run")
    )
    assert estimate["status"] == "estimate" and estimate["estimate"]["steps"] == 50
    assert json.loads(run("train", "configure", "--model-id", model.public_id, "--config", '{"steps": 50}'))[
        "parameters"
    ] == {"steps": 50}
    markdown = run("train", "start", "--model-id", model.public_id, "--dry-run", "--format", "markdown")
    assert markdown.startswith("## Cost estimate (dry run, nothing changed)")
    assert json.loads(run("train", "start", "--model-id", model.public_id))["status"] == "started"
    assert json.loads(run("train", "stop", "--model-id", model.public_id))["status"] == "stopped"
    assert (
        json.loads(run("train", "delete_image", "--model-id", model.public_id, "--training-image-id", ids[11]))[
            "training_images_total"
        ]
        == 11
    )
    with pytest.raises(CommandError, match="--config is not valid JSON"):
        run("train", "configure", "--model-id", model.public_id, "--config", "{steps: 5}")
    other = TeamFactory()
    with pytest.raises(CommandError, match=f"model {model.public_id} not found"):
        run("train", "start", "--model-id", model.public_id, "--team-id", other.public_id)


def test_import_dataset_reads_kohya_captions_and_reports_what_it_skipped(tmp_path: Path) -> None:
    model = ModelFactory()
    folder = tmp_path / "shoot"
    folder.mkdir()
    for index in range(3):
        (folder / f"{index}.png").write_bytes(png(colour=(index * 80, 10, 10)))
    (folder / "0.txt").write_text("zxq, a dark square\n", encoding="utf-8")
    (folder / "notes.md").write_text("not an image", encoding="utf-8")
    (folder / "broken.jpg").write_bytes(b"nope")
    (folder / "tiny.png").write_bytes(png((16, 16)))
    output = run("import_dataset", str(folder), "--model-id", model.public_id)
    assert output.splitlines()[0] == f"added 3 image(s) to {model.public_id}; skipped 3"
    assert "skipped broken.jpg: 'broken.jpg' is not an image" in output
    assert "skipped notes.md: not an image file (by its extension)" in output
    assert "skipped tiny.png: 'tiny.png' is 16x16 pixels" in output
    first = TrainingImage.objects.get(model=model, name="0.png")
    assert first.description == "zxq, a dark square" and first.sidecar_caption == "zxq, a dark square"
    with pytest.raises(CommandError, match="no image was imported"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "x.gif").write_bytes(b"x")
        run("import_dataset", str(empty), "--model-id", model.public_id)


def test_export_lora_writes_both_layouts(tiny_sd15: Path, fast_training: dict, tmp_path: Path) -> None:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**fast_training, "steps": 2})
    task = training_start(model=model)
    with pytest.raises(CommandError, match="only a completed task has weights"):
        run("export_lora", str(task.pk), "--out", str(tmp_path / "x.safetensors"))
    assert run_training_task(str(task.pk)) == TrainingTask.Status.COMPLETED
    run("export_lora", model.public_id, "--format", "diffusers", "--out", str(tmp_path / "a.safetensors"))
    run("export_lora", str(task.pk), "--format", "kohya", "--out", str(tmp_path / "b.safetensors"))
    from safetensors.torch import load_file

    assert all(k.startswith("unet.") for k in load_file(tmp_path / "a.safetensors"))
    assert all(k.startswith("lora_unet_") for k in load_file(tmp_path / "b.safetensors"))
    with pytest.raises(CommandError, match="is a folder"):
        run("export_lora", str(task.pk), "--out", str(tmp_path))


def test_make_base_model_builds_each_family(tmp_path: Path) -> None:
    assert "sdxl tiny model written to" in run("make_base_model", "--family", "sdxl", "--out", str(tmp_path / "x"))
    assert (tmp_path / "x" / "model_index.json").is_file()
    with pytest.raises(CommandError, match="already exists"):
        run("make_base_model", "--family", "sdxl", "--out", str(tmp_path / "x"))


def test_reap_stale_tasks_command_reports(tiny_sd15: Path) -> None:
    model = ModelFactory()
    add_images(model, 12)
    api_key_create(team=model.team)
    task = training_start(model=model)
    from django.utils import timezone

    from models_app.services.training import training_task_claim

    training_task_claim(task_id=str(task.pk), worker_id="gone")
    TrainingTask.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now())
    output = run("reap_stale_tasks")
    assert output.startswith("re-queued 1, failed 0") and f"re-queued {task.pk}" in output
