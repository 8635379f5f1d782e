"""The orphan sweeper: what it removes (orphans past the grace), what it never removes (referenced files,
young files, a running task's folder, other programs' files), and the leftovers of real killed processes."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, models, transaction

from models_app.models import Asset, GenerationJob, Model, Team, TrainingTask
from models_app.services.assets import asset_create
from models_app.services.sweeper import STORED_FILE_FIELDS, OrphanKind, orphans_sweep
from models_app.services.task_files import training_checkpoint_record, training_task_add_sample
from tests.factories import ModelFactory, TeamFactory, api_token
from tests.helpers import png, wait_for, worker_environment
from training.housekeeping import sweep_orphans

DAY = 24 * 3600
HANG_GUARD = 60  # seconds: only ever reached when something hangs


@pytest.fixture
def upload_temp_dir(settings) -> Path:
    """The test's own temporary-upload folder (conftest's isolated_files makes one per test)."""
    return Path(settings.FILE_UPLOAD_TEMP_DIR)


def make_old(path: Path, seconds: float = DAY + 3600) -> None:
    """Set a file's or a whole folder's modification times `seconds` into the past."""
    then = time.time() - seconds
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(item, (then, then), follow_symlinks=False)


def stored(name: str) -> Path:
    return Path(django_settings.MEDIA_ROOT) / name


def task_for(model: Model, status: str) -> TrainingTask:
    return TrainingTask.objects.create(team=model.team, model=model, trigger_word="zxq", status=status)


def locations(report_list: list) -> set[str]:
    return {orphan.location for orphan in report_list}


@pytest.mark.django_db
def test_every_file_field_is_known_to_the_sweeper() -> None:
    """A FileField the sweeper does not know would have its files taken for orphans (or never swept)."""
    known = {(model, name) for fields in STORED_FILE_FIELDS.values() for model, name in fields}
    file_fields = {
        (model, field.name)
        for model in apps.get_app_config("models_app").get_models()
        for field in model._meta.get_fields()
        if isinstance(field, models.FileField)
    }
    assert file_fields == known


@pytest.mark.django_db
def test_orphans_past_the_grace_are_reported_then_removed_and_nothing_else_is(
    settings, tmp_path: Path, upload_temp_dir: Path
) -> None:
    model = ModelFactory()
    # Files that rows name, stored by the services that write them.
    asset = asset_create(team=model.team, content=png(), name="kept.png")
    done = task_for(model, TrainingTask.Status.COMPLETED)
    done.weights.save("pytorch_lora_weights.safetensors", ContentFile(b"weights"), save=True)
    sample_path = tmp_path / "sample-0.png"
    sample_path.write_bytes(png())
    sample = training_task_add_sample(task_id=done.pk, step=10, prompt="a zxq", path=sample_path)
    checkpoint_folder = tmp_path / "step-0000010"
    checkpoint_folder.mkdir()
    (checkpoint_folder / "adapter.safetensors").write_bytes(b"adapter")
    checkpoint = training_checkpoint_record(task_id=done.pk, step=10, folder=checkpoint_folder, keep=2)
    referenced = [asset.file.name, done.weights.name, sample.file.name, *checkpoint.files.values()]
    assert all(name.split("/")[0] in STORED_FILE_FIELDS for name in referenced)

    # Files no row names: the ones a killed process leaves.
    team_folder = f"assets/{model.team.public_id}"
    orphan_names = [
        default_storage.save(f"{team_folder}/asset_killed.png", ContentFile(png())),
        default_storage.save(f"training/{done.pk}/checkpoints/step-0000020/adapter.safetensors", ContentFile(b"x")),
        default_storage.save(f"training/{uuid.uuid4()}/pytorch_lora_weights.safetensors", ContentFile(b"xy")),
    ]
    elsewhere = default_storage.save("exports/not-ours-to-judge.bin", ContentFile(b"z"))
    make_old(Path(settings.MEDIA_ROOT))
    young = default_storage.save(f"{team_folder}/asset_being_saved.png", ContentFile(png()))

    # Temporary uploads: Django's names only, past the grace only.
    old_upload = upload_temp_dir / "tmpab12cd_9.upload.png"
    old_upload.write_bytes(b"partial body")
    other_program = upload_temp_dir / "tmp_other_program.txt"
    other_program.write_bytes(b"not ours")
    make_old(upload_temp_dir)
    young_upload = upload_temp_dir / "tmpzz99zz00.upload.jpg"
    young_upload.write_bytes(b"still arriving")

    # Work folders: a finished or vanished task's, past the grace; never a live task's, whatever its age.
    work = Path(settings.TRAINING_WORK_DIR)
    running = task_for(ModelFactory(team=model.team), TrainingTask.Status.TRAINING)
    vanished = str(uuid.uuid4())  # a task deleted since (its model was deleted)
    folders = {
        name: work / name for name in (str(done.pk), str(running.pk), vanished, "not-a-task", "scratch/tmpgen_killed")
    }
    for folder in folders.values():
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "optimizer.pt").write_bytes(b"0" * 1000)
        make_old(folder)
    vanished_young = work / str(uuid.uuid4())
    (vanished_young / "dataset").mkdir(parents=True)

    # Compile caches: torch.compile's kernels under var/, unused past the grace.
    settings.COMPILE_CACHE_DIR = tmp_path / "compile-cache"
    old_kernel = settings.COMPILE_CACHE_DIR / "inductor" / "fxgraph" / "ab" / "graph.bin"
    old_kernel.parent.mkdir(parents=True)
    old_kernel.write_bytes(b"k" * 100)
    make_old(settings.COMPILE_CACHE_DIR)
    fresh_kernel = settings.COMPILE_CACHE_DIR / "triton" / "cd" / "kernel.cubin"
    fresh_kernel.parent.mkdir(parents=True)
    fresh_kernel.write_bytes(b"k")

    expected = {
        OrphanKind.STORED_FILE: set(orphan_names),
        OrphanKind.TEMPORARY_UPLOAD: {str(old_upload)},
        OrphanKind.WORK_FOLDER: {str(folders[name]) for name in (str(done.pk), vanished, "scratch/tmpgen_killed")},
        OrphanKind.COMPILE_CACHE: {str(old_kernel)},
    }

    report = orphans_sweep(remove=False)
    assert report.grace_seconds == DAY and report.removed == []
    assert {kind: {o.location for o in report.found if o.kind == kind} for kind in OrphanKind} == expected
    totals = report.totals(report.found)
    assert totals[OrphanKind.WORK_FOLDER]["bytes"] == 3 * 1000
    assert totals[OrphanKind.TEMPORARY_UPLOAD] == {"count": 1, "bytes": len(b"partial body")}
    assert all(stored(name).exists() for name in orphan_names) and old_upload.exists()

    # A running generation's scratch folder is not told apart from a dead one's: none is touched meanwhile.
    job = GenerationJob.objects.create(team=model.team, model=model, prompt="a zxq", status="running")
    assert str(folders["scratch/tmpgen_killed"]) not in locations(orphans_sweep(remove=False).found)
    job.delete()

    report = orphans_sweep(remove=True)
    assert locations(report.removed) == locations(report.found) == set().union(*expected.values())
    assert report.errors == []
    assert not any(stored(name).exists() for name in orphan_names)
    assert not old_upload.exists() and not any(Path(path).exists() for path in expected[OrphanKind.WORK_FOLDER])
    # Untouched: what rows name, what is young, what is not ours, and the live task's folder.
    for name in [*referenced, young, elsewhere]:
        assert stored(name).exists(), name
    assert young_upload.exists() and other_program.exists() and vanished_young.exists() and fresh_kernel.exists()
    assert folders[str(running.pk)].exists() and folders["not-a-task"].exists()
    assert orphans_sweep(remove=True).found == []


@pytest.mark.django_db
def test_the_command_reports_on_a_dry_run_removes_without_and_refuses_bad_input(settings) -> None:
    team = TeamFactory()
    name = default_storage.save(f"assets/{team.public_id}/asset_orphan.png", ContentFile(png()))
    make_old(stored(name), seconds=3600)

    def run(*args: str) -> str:
        out = io.StringIO()
        call_command("sweep_orphans", *args, stdout=out, stderr=io.StringIO())
        return out.getvalue()

    default_grace = run("--dry-run")
    assert "not modified for 86400 s (24 h) - dry run" in default_grace and name not in default_grace
    dry = run("--dry-run", "--grace", "600")
    assert f"found       stored_file       {name}" in dry
    assert "stored files without a row: 1 (" in dry and "run without --dry-run to remove them" in dry
    assert stored(name).exists()

    removed = run("--grace", "600")
    assert f"removed     stored_file       {name}" in removed and "removed 1 of 1" in removed
    assert not stored(name).exists()

    with pytest.raises(CommandError, match="the grace period must be 0 or more seconds; got -5"):
        run("--grace", "-5")
    with pytest.raises(CommandError, match="invalid int value: 'soon'"):
        run("--grace", "soon")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=HANG_GUARD)


ASSET_CREATE = """
import sys

import django

django.setup()
from models_app.models import Team
from models_app.services.assets import asset_create

with open(sys.argv[2], "rb") as handle:
    asset_create(team=Team.objects.get(pk=int(sys.argv[1])), content=handle.read(), name="upload.png")
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_process_killed_between_storing_a_file_and_committing_its_row_leaves_an_orphan_the_sweep_removes(
    settings, tmp_path: Path
) -> None:
    team = TeamFactory()
    content = png((128, 128), "blue")
    (tmp_path / "upload.png").write_bytes(content)
    assets_folder = stored(f"assets/{team.public_id}")
    log = tmp_path / "asset-create.log"
    # The test holds a lock that the Asset INSERT needs, so the real service stops after storing the
    # file and before its row commits; that is when the process is killed.
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {Asset._meta.db_table} IN SHARE MODE")
        else:
            Team.objects.filter(pk=team.pk).update(name=team.name)  # takes SQLite's one write lock
        with open(log, "wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-c", ASSET_CREATE, str(team.pk), str(tmp_path / "upload.png")],
                cwd=django_settings.BASE_DIR,
                env=worker_environment(settings, DJANGO_SETTINGS_MODULE="config.settings.test"),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            landed = wait_for(
                lambda: [p for p in assets_folder.glob("*.png") if p.stat().st_size == len(content)],
                timeout=HANG_GUARD,
                what=f"the stored file (log: {log})",
            )
            if connection.vendor == "postgresql":
                wait_for(lambda: waiting_on_a_lock(Asset._meta.db_table), timeout=HANG_GUARD, what="the INSERT to wait")
            assert process.poll() is None, log.read_text()
        finally:
            kill_group(process)
    assert process.returncode == -signal.SIGKILL

    [orphan] = landed
    name = f"assets/{team.public_id}/{orphan.name}"
    assert not Asset.objects.filter(team=team).exists() and orphan.read_bytes() == content
    assert name not in locations(orphans_sweep(remove=True).found)  # within the grace: maybe a row to come
    make_old(orphan)
    report = orphans_sweep(remove=True)
    assert [(o.kind, o.location, o.size_bytes) for o in report.removed] == [
        (OrphanKind.STORED_FILE, name, len(content))
    ]
    assert not orphan.exists()


def waiting_on_a_lock(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass AND pid <> pg_backend_pid()",
            [table],
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_web_server_killed_mid_upload_leaves_a_temporary_file_the_sweep_removes(
    settings, tmp_path: Path, upload_temp_dir: Path
) -> None:
    team = TeamFactory()
    token = api_token(team)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "--workers", "1", "--bind", f"127.0.0.1:{port}"],
            cwd=django_settings.BASE_DIR,
            env=worker_environment(
                settings,
                DJANGO_SETTINGS_MODULE="config.settings.test",
                # Where Django's TemporaryFileUploadHandler writes, whether or not the setting is read from the environment.
                TMPDIR=str(upload_temp_dir),
                FILE_UPLOAD_TEMP_DIR=str(upload_temp_dir),
            ),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/v1/assets", token), timeout=HANG_GUARD, what=f"gunicorn (log: {log})")
        boundary = "sweeper-test-boundary"
        part = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="large.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        # Declared larger than FILE_UPLOAD_MAX_MEMORY_SIZE, so Django spools the file to a temporary one.
        declared = django_settings.FILE_UPLOAD_MAX_MEMORY_SIZE + 3 * 1024 * 1024
        head = (
            f"POST /v1/assets HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD) as client:
            client.sendall(head + part + png())
            sent = 0

            def spooled() -> list[Path]:
                # The body arrives slowly, 64 KB at a time, until the server has started the temporary file.
                nonlocal sent
                if sent < declared // 2:
                    client.sendall(b"\0" * 65536)
                    sent += 65536
                return list(upload_temp_dir.glob("tmp*.upload.png"))

            [temporary] = wait_for(
                spooled, timeout=HANG_GUARD, interval=0.05, what=f"the upload's temporary file (log: {log})"
            )
            assert server.poll() is None, log.read_text()
            kill_group(server)  # mid-body: the rest of the declared length never arrives
    finally:
        kill_group(server)
    assert server.returncode == -signal.SIGKILL

    assert temporary.exists() and temporary.stat().st_size > 0  # nothing ran to remove it
    assert not Asset.objects.filter(team=team).exists()
    assert str(temporary) not in locations(orphans_sweep(remove=True).found)  # maybe still arriving
    make_old(temporary)
    result = sweep_orphans()  # the housekeeping schedule's entry point
    assert result["removed_locations"] == [str(temporary)]
    assert result["removed"][OrphanKind.TEMPORARY_UPLOAD]["count"] == 1  # type: ignore[index]
    assert not temporary.exists()


def answers(url: str, token: str) -> bool:
    """Whether the app answers: the asset list takes only POST, so a 405 means Django is up."""
    import httpx

    try:
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 405
    except httpx.HTTPError:
        return False
