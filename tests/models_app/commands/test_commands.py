"""Each management command's success and failure paths."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from models_app.models import ApiKey, CreditEntry, Membership, Project, Team, TrainingImage, TrainingTask
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
    with pytest.raises(CommandError, match=f"API key {key.key} was already revoked on "):
        run("apikey", "revoke", key.key)  # a second revoke says so, and fails


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
        (("team", "create", "Neg", "--max-parallel-trainings", "-1"), "max_parallel_trainings must be a whole number"),
        (("make_base_model", "--out", "/proc/nope/x"), "cannot create /proc/nope"),
        (("credits", "grant", "team_nope", "5"), "team team_nope not found"),
        (("credits", "show", "team_nope"), "team team_nope not found"),
        (("user", "password", "ghost", "--password-stdin"), "user 'ghost' not found"),
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

    from models_app.services.worker_protocol import training_task_claim

    training_task_claim(task_id=str(task.pk), worker_id="gone")
    TrainingTask.objects.filter(pk=task.pk).update(lease_expires_at=timezone.now())
    output = run("reap_stale_tasks")
    assert output.startswith("re-queued 1, failed 0") and f"re-queued {task.pk}" in output


def test_make_base_model_refuses_an_existing_folder_before_building_anything(tmp_path: Path) -> None:
    parent = tmp_path / "models"
    (parent / "taken").mkdir(parents=True)
    with pytest.raises(CommandError, match="already exists; give a new folder"):
        run("make_base_model", "--family", "flux", "--out", str(parent / "taken"))
    assert list((parent / "taken").iterdir()) == []  # nothing was built or staged beside it
    assert [p.name for p in parent.iterdir()] == ["taken"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("grant", "{team}", "abc"), "AMOUNT must be a number of credits, like 50 or 12.5; got 'abc'"),
        (("grant", "{team}", "-5"), "AMOUNT must be positive with at most 2 decimals; got '-5'"),
        (("grant", "{team}", "1.005"), "AMOUNT must be positive with at most 2 decimals"),
        (("grant", "{team}", "NaN"), "AMOUNT must be positive"),
        (("show", "{team}", "--limit", "0"), "--limit must be 1 or more"),
    ],
)
def test_the_credits_command_refuses_bad_amounts(args: tuple[str, ...], message: str) -> None:
    team = TeamFactory()
    with pytest.raises(CommandError, match=message):
        run("credits", *(arg.format(team=team.public_id) for arg in args))
    assert not CreditEntry.objects.filter(team=team).exists()


def test_credits_grant_and_show() -> None:
    team = TeamFactory()
    assert run("credits", "show", team.public_id).startswith(f"{team.public_id}\t{team.name}\tbalance unlimited")
    output = run("credits", "grant", team.public_id, "50", "--note", "invoice 7")
    assert output.strip() == f"granted 50 credits to {team.public_id}; balance 50.00"
    run("credits", "grant", team.public_id, "12.5")
    shown = run("credits", "show", team.public_id).splitlines()
    assert shown[0].endswith("balance 62.50")
    assert "grant\t+12.50\tbalance 62.50" in shown[1] and "invoice 7" in shown[2]


def test_user_create_makes_a_staff_member_of_the_team_who_can_sign_in_and_password_changes_it() -> None:
    team = TeamFactory()
    out = io.StringIO()
    call_command(
        "user", "create", "cleo", "--team-id", team.public_id, "--role", "admin", "--password-stdin",
        stdin=io.StringIO("a long enough secret 42\n"), stdout=out,
    )  # fmt: skip
    assert out.getvalue().strip() == f"cleo created: staff, admin of {team.public_id}"
    user = get_user_model().objects.get(username="cleo")
    assert user.is_staff and not user.is_superuser and user.check_password("a long enough secret 42")
    assert Membership.objects.get(team=team, user=user).role == "admin"
    call_command(
        "user", "password", "cleo", "--password-stdin", stdin=io.StringIO("another fine secret 7\n"), stdout=out
    )
    user.refresh_from_db()
    assert user.check_password("another fine secret 7")
    with pytest.raises(CommandError, match="user 'cleo' already exists"):
        call_command(
            "user",
            "create",
            "cleo",
            "--team-id",
            team.public_id,
            "--password-stdin",
            stdin=io.StringIO("x y z w q r 1\n"),
        )
    with pytest.raises(CommandError, match="no terminal to ask the password on"):
        call_command("user", "password", "cleo", stdin=io.StringIO(""))
    with pytest.raises(CommandError, match="the password is empty"):
        call_command("user", "password", "cleo", "--password-stdin", stdin=io.StringIO("\n"))


def test_import_dataset_checks_the_lock_and_the_bounds_before_reading_any_file(tiny_sd15: Path, tmp_path: Path) -> None:
    model = ModelFactory()
    add_images(model, 17)
    folder = tmp_path / "more"
    folder.mkdir()
    for index in range(14):
        (folder / f"{index}.png").write_bytes(png(colour=(index * 15, 10, 10)))
    with pytest.raises(CommandError, match="has 17 training images and the folder 14: 31 would pass the maximum of 20"):
        run("import_dataset", str(folder), "--model-id", model.public_id)
    assert model.training_images.count() == 17
    training_start(model=model)
    with pytest.raises(CommandError, match="its dataset cannot change until training ends"):
        run("import_dataset", str(folder / ".."), "--model-id", model.public_id)
    assert model.training_images.count() == 17


def test_export_lora_refuses_to_overwrite_without_force(tiny_sd15: Path, fast_training: dict, tmp_path: Path) -> None:
    model = ModelFactory()
    add_images(model, 12)
    model_configure(model=model, parameters={**fast_training, "steps": 2})
    task = training_start(model=model)
    assert run_training_task(str(task.pk)) == TrainingTask.Status.COMPLETED
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(CommandError, match="exists; pass --force to overwrite it"):
        run("export_lora", model.public_id, "--out", str(target))
    assert target.read_bytes() == b"keep me"
    run("export_lora", model.public_id, "--out", str(target), "--force")
    assert target.stat().st_size > 1000


@pytest.mark.parametrize(
    "command", ["team", "apikey", "credits", "user", "import_dataset", "export_lora", "make_base_model"]
)
def test_every_option_of_the_staff_commands_has_help(command: str) -> None:
    from django.core.management import load_command_class

    parser = load_command_class("models_app", command).create_parser("manage.py", command)

    def undocumented(parser) -> list[str]:
        missing = []
        for action in parser._actions:
            if action.dest in ("help", "version", "verbosity", "settings", "pythonpath", "traceback", "no_color",
                               "force_color", "skip_checks"):  # fmt: skip
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):  # sub-commands
                for sub in action.choices.values():
                    missing += undocumented(sub)
                continue
            if not action.help:
                missing.append("/".join(action.option_strings) or action.dest)
        return missing

    assert undocumented(parser) == []
