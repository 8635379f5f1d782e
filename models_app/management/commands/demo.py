"""The main job end to end on the embedded defaults: build a tiny base model, make a dataset, train it
through the queue, show what the training changed, and say where everything is. With --serve (what `make
demo` runs) the web server then runs beside the same worker, so that every documented example (a generation
included) completes against it; Ctrl-C stops both.

A rerun reuses the demo team, its API key and its model. The command never leaves work behind: it
stops its own worker cleanly on any exit, and cancels its training if it gives up (no progress for
--timeout seconds, or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.urls import reverse

from contract import demo as recipe
from contract.families import DEMO_FAMILY, FAMILY_LABELS
from models_app.errors import Conflict
from models_app.models import ApiKey, Membership, Model, Team, TrainingTask
from models_app.services.accounts import api_key_create, api_key_token, membership_set, team_create
from models_app.services.datasets import model_configure, model_create, training_image_add
from models_app.services.training import training_cancel, training_start
from training.engine.testing.images import make_images

DEMO_TEAM = "Demo team"
DEMO_USER = "demo"
DEMO_PASSWORD = "demo"  # local demo only; the README says to change it anywhere else
DEMO_MODEL = "Demo shapes"
TRIGGER_WORD = recipe.TRIGGER_WORD
HELD_OUT = recipe.HELD_OUT
PROMPT = recipe.PROMPT
SEED = recipe.SEED
HEARTBEAT_SECONDS = 30  # never silent longer than this: a line says what is happening
FINAL_STATUSES = (Model.Status.READY, Model.Status.FAILED, Model.Status.CANCELED, Model.Status.DELETED)


class Command(BaseCommand):
    help = (
        "Train a demo model end to end (tiny base model, generated images, a real queue worker) and show what "
        "the training changed. Reruns reuse the demo team, key and model."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--images",
            type=int,
            default=recipe.IMAGES,
            help=f"number of generated images (12-20, default {recipe.IMAGES})",
        )
        parser.add_argument("--steps", type=int, default=recipe.STEPS, help=f"training steps (default {recipe.STEPS})")
        parser.add_argument(
            "--timeout", type=int, default=600, help="give up (and cancel the training) after this many seconds "
            "without progress; the wait has no limit while the training advances",
        )  # fmt: skip
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="where the server will listen")
        parser.add_argument(
            "--serve", metavar="ADDRESS", default=None, help="then run the web server at ADDRESS (e.g. 127.0.0.1:8000) "
            "beside the worker until Ctrl-C, which stops both",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        if not 12 <= options["images"] <= 20:
            raise CommandError("--images must be between 12 and 20")
        if options["steps"] < 1 or options["timeout"] < 1:
            raise CommandError("--steps and --timeout must be positive")
        # A `kill` (SIGTERM) ends the command the way Ctrl-C does: through the clean-up below, which cancels an
        # unfinished training and stops the worker. Python's default would end at once and strand the worker.
        previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
        try:
            self.run_demo(options)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def run_demo(self, options: dict[str, Any]) -> None:
        started = time.monotonic()
        self.stdout.write("Preparing the database")
        call_command("migrate", interactive=False, verbosity=0)
        base_model = ensure_base_model(self.stdout)
        team, secret_token = self.ensure_team_and_key()
        model = self.ensure_model(team, base_model, images=options["images"], steps=options["steps"])
        base_url = f"http://{options['serve']}" if options["serve"] else options["base_url"].rstrip("/")

        task = model.training_tasks.filter(status__in=TrainingTask.ACTIVE_STATUSES).first()
        if task is None:
            task = training_start(model=model)
            self.stdout.write(f"Training task {task.pk} queued ({options['steps']} steps)")
        else:
            self.stdout.write(f"Training task {task.pk} was left unfinished by an earlier run: finishing it")
        cluster = start_worker(self.stdout)
        try:
            model = self.follow_until_done(model, task, cluster, stall_timeout=options["timeout"])
            task.refresh_from_db()
            if model.status != Model.Status.READY:
                raise CommandError(f"training ended {model.status}: {task.error_message or 'no message'}")
            self.stdout.write("Measuring what the training changed (generating with and without the LoRA)")
            report = what_it_learned(model, task, var_dir=Path(settings.VAR_DIR) / "demo")
            self.stdout.write(
                self.style.SUCCESS(f"\nDone in {time.monotonic() - started:.0f} s. What the training did:")
            )
            for line in report.lines():
                self.stdout.write(f"  {line}")
            self.print_where(model, task, report, base_url, secret_token)
            if options["serve"]:
                self.serve(options["serve"])
        finally:
            stop_worker(cluster, self.stdout)

    def print_where(
        self, model: Model, task: TrainingTask, report: LearningReport, base_url: str, secret_token: str
    ) -> None:
        self.stdout.write(self.style.SUCCESS("\nYour trained model:"))
        admin_task = reverse("admin:models_app_trainingtask_change", args=[task.pk])
        rows = [
            ("Model", f"{model.public_id} ({model.status})"),
            ("Weights (LoRA)", Path(task.weights.path).as_posix()),
            ("Before / after", report.comparison.as_posix()),
            ("Generated image", report.generated.as_posix()),
            ("Front page", f"{base_url}/"),
            ("Training page", f"{base_url}{admin_task}  (loss curve, held-out loss, samples)"),
            ("Admin", f"{base_url}/admin/ (user {DEMO_USER}, password {DEMO_PASSWORD})"),
            ("API docs", f"{base_url}/api/docs/"),
            ("API key", secret_token),
            ("Try", f"curl -H 'Authorization: Bearer {secret_token}' {base_url}/v1/models/{model.public_id}"),
        ]
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.stdout.write(f"  {label.ljust(width)}  {value}")

    def serve(self, address: str) -> None:
        """The development server in this process, beside the worker this command started: generations and
        trainings asked through the API run while it serves. Ctrl-C ends both."""
        self.stdout.write(
            self.style.SUCCESS(f"\nServing at http://{address}/ with a worker beside it; Ctrl-C stops both")
        )
        self.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the worker is stopped on the way out
            call_command("runserver", address, use_reloader=False, stdout=self.stdout, stderr=self.stderr)

    @transaction.atomic
    def ensure_team_and_key(self) -> tuple[Team, str]:
        """The demo user, team and API key; the key's token is kept (owner-only) under var/ for reruns."""
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username=DEMO_USER, defaults={"email": "demo@example.com"})
        user.is_staff = True
        user.is_superuser = True
        user.set_password(DEMO_PASSWORD)
        user.save()
        team = Team.objects.filter(name=DEMO_TEAM, memberships__user=user).first()
        if team is None:
            team = team_create(name=DEMO_TEAM, owner=user)
        membership_set(team=team, user=user, role=Membership.Role.OWNER)
        token_file = Path(settings.VAR_DIR) / "demo" / "api-key"
        if token_file.is_file():
            token = token_file.read_text().strip()
            key_id = token.split(".", 1)[0]
            if ApiKey.objects.filter(team=team, key=key_id, revoked_at__isnull=True).exists():
                return team, token
        api_key, secret = api_key_create(team=team, name="demo", created_by=user)
        token = api_key_token(api_key, secret)
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
        return team, token

    def ensure_model(self, team: Team, base_model: Path, *, images: int, steps: int) -> Model:
        """The demo model, created with its images the first time; a rerun only updates its step count."""
        model = team.models.exclude(status=Model.Status.DELETED).filter(name=DEMO_MODEL).first()
        parameters: dict[str, Any] = {
            **recipe.PARAMETERS,
            "base_model_path": str(base_model),
            "steps": steps,
            "sample_every": max(1, steps // recipe.VALIDATIONS),
            "sample_prompts": [PROMPT],
        }
        if model is not None:
            if model.status not in (Model.Status.QUEUED, Model.Status.TRAINING):
                model_configure(model=model, parameters=parameters)
            self.stdout.write(f"Reusing model {model.public_id} ({model.training_images.count()} images)")
            return model
        model = model_create(
            team=team,
            name=DEMO_MODEL,
            trigger_word=TRIGGER_WORD,
            short_description="Coloured shapes drawn by the demo",
            parameters=parameters,
        )
        added = [
            training_image_add(model=model, content=image.content, name=image.name, description=image.caption)
            for image in make_images(images, seed=recipe.DATA_SEED, trigger_word=TRIGGER_WORD)
        ]
        held_out = [image.asset.public_id for image in added[-HELD_OUT:]]
        model_configure(model=model, parameters={**parameters, "validation_images": held_out})
        self.stdout.write(f"Model {model.public_id} created with {images} images ({HELD_OUT} held out)")
        return model

    def follow_until_done(
        self, model: Model, task: TrainingTask, cluster: subprocess.Popen[bytes], *, stall_timeout: int
    ) -> Model:
        """Follow the training the worker runs until it ends; cancel it if this command gives up."""
        watch = ProgressLine(self.stdout)
        finished = False
        try:
            last_change, last_state = time.monotonic(), None
            while True:
                model.refresh_from_db()
                task.refresh_from_db()
                state = (task.status, task.preprocessing_stage, task.processed_files_count, task.current_step)
                if state != last_state:
                    last_change, last_state = time.monotonic(), state
                watch.show(task)
                if model.status in FINAL_STATUSES:
                    finished = True
                    return model
                if cluster.poll() is not None:
                    raise CommandError(f"the worker exited with code {cluster.returncode}; see {worker_log_path()}")
                if time.monotonic() - last_change > stall_timeout:
                    raise CommandError(
                        f"the training made no progress for {stall_timeout} s; it was cancelled. "
                        f"See {worker_log_path()}, or rerun with a larger TIMEOUT"
                    )
                time.sleep(0.5)
        except KeyboardInterrupt:
            raise CommandError("interrupted; the training was cancelled") from None
        finally:
            watch.end()
            if not finished:
                give_up(model)


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the command's own Ctrl-C path: cancel what is unfinished, stop the worker


def worker_log_path() -> Path:
    return Path(settings.VAR_DIR) / "logs" / "qcluster.log"


def start_worker(out: Any) -> subprocess.Popen[bytes]:
    """A real `qcluster` beside this process (its own session: Ctrl-C reaches this command, which stops it)."""
    log_path = worker_log_path()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out.write(f"Starting a django-q2 worker to run it (its log: {log_path})")
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "qcluster"],
            env=dict(os.environ),  # same settings module and environment as this process
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class ProgressLine:
    """One line that updates in place on a terminal (a line per tenth of the run elsewhere), with an ETA
    from a smoothed rate of the steps this process saw. Never silent for long: a phase that shows no progress
    (loading, caching, a slow first step) says how long it has been at it, in place on a terminal and every
    HEARTBEAT_SECONDS on a log."""

    out: Any
    last_text: str = ""
    last_decile: int = -1
    rate: float | None = None  # steps per second, smoothed
    last_seen: tuple[int, float] | None = None
    phase: tuple[str, float] | None = None  # the phase's text and when it began
    last_written: float = 0.0

    @property
    def interactive(self) -> bool:
        stream: TextIO = getattr(self.out, "_out", self.out)
        return bool(getattr(stream, "isatty", lambda: False)())

    def show(self, task: TrainingTask) -> None:
        now = time.monotonic()
        text = self.describe(task)
        if self.phase is None or self.phase[0] != text:
            self.phase = (text, now)
        waited = now - self.phase[1]
        if self.interactive:
            shown = f"{text} ({waited:.0f} s)" if waited >= 2 and not task.current_step else text
            if shown != self.last_text:
                self.last_text = shown
                self.out.write(f"\r\033[K  {shown}", ending="")
                self.out.flush()
            return
        decile = int((task.progress or 0) // 10) if task.current_step else -1
        if text != self.last_text and (decile != self.last_decile or not task.current_step):
            self.last_decile = decile
            self.write(text, now)
        elif now - self.last_written >= HEARTBEAT_SECONDS:
            self.write(text if task.current_step else f"{text} (still at it after {waited:.0f} s)", now, remember=False)

    def write(self, text: str, now: float, *, remember: bool = True) -> None:
        if remember:  # a heartbeat repeats the phase: the next change of text is still news
            self.last_text = text
        self.last_written = now
        self.out.write(f"  {text}")
        self.out.flush()

    def describe(self, task: TrainingTask) -> str:
        if task.status == TrainingTask.Status.PENDING:
            return "waiting for the worker to pick the training up"
        if not task.current_step:
            stage = task.preprocessing_stage or "starting"
            if stage == "loading":
                return "loading the base model"
            if stage == "training":
                return "training: the first step (torch prepares its kernels)"
            return f"{stage}: {task.processed_files_count or 0}/{task.total_files_count or 0} images"
        now = time.monotonic()
        if self.last_seen is not None and task.current_step > self.last_seen[0]:
            measured = (task.current_step - self.last_seen[0]) / max(1e-3, now - self.last_seen[1])
            self.rate = measured if self.rate is None else 0.7 * self.rate + 0.3 * measured
        if self.last_seen is None or task.current_step != self.last_seen[0]:
            self.last_seen = (task.current_step, now)
        text = f"training: step {task.current_step}/{task.total_steps} ({task.progress:.0f}%)"
        if task.loss is not None:
            text += f", loss {task.loss:.3f}"
        if self.rate:
            left = (task.total_steps - task.current_step) / self.rate
            text += f", {self.rate:.1f} steps/s, about {left:.0f} s left"
        return text

    def end(self) -> None:
        if self.interactive and self.last_text:
            self.out.write("")


def give_up(model: Model) -> None:
    """Cancel the demo's training so that nothing is left queued or running after the command ends."""
    with contextlib.suppress(Conflict):  # already finished or cancelled: nothing is left to stop
        training_cancel(model=model)


def stop_worker(cluster: subprocess.Popen[bytes], out: Any) -> None:
    """SIGTERM to the cluster's main process: a running training saves a snapshot and is handed back
    (or ends cancelled), then the cluster exits. SIGKILL only if that does not happen in time."""
    if cluster.poll() is not None:
        return
    os.kill(cluster.pid, signal.SIGTERM)
    try:
        cluster.wait(timeout=settings.TRAINING_SHUTDOWN_GRACE_SECONDS + 60)
    except subprocess.TimeoutExpired:
        out.write("the worker did not stop in time; killing it")
        os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait(timeout=30)


def ensure_base_model(out: Any) -> Path:
    from training.engine.testing import build_tiny_model

    path = Path(settings.TRAINING_BASE_MODEL_ROOTS[0]) / f"tiny-{DEMO_FAMILY}"
    if not (path / "model_index.json").is_file():
        out.write(f"Building the tiny {FAMILY_LABELS[DEMO_FAMILY]} base model at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        build_tiny_model(DEMO_FAMILY, path)
    return path


@dataclass(frozen=True)
class LearningReport:
    heldout: list[tuple[int, float]]  # (step, held-out loss), from step 0
    match_without: float  # mean distance of a caption's generations to its image, without the LoRA
    match_with: float
    match_images: int
    comparison: Path
    generated: Path

    def lines(self) -> list[str]:
        """The measures bench/demo.py found to move on every seed, each said as what it is: a measure that
        got worse is reported as worse."""
        lines = []
        if len(self.heldout) > 1 and self.heldout[0][0] == 0:
            start = self.heldout[0][1]
            best_step, best = min(self.heldout[1:], key=lambda point: point[1])
            end = self.heldout[-1][1]
            if best < start:
                lines.append(
                    f"held-out loss (images it never trained on): {start:.3f} at the start, lowest {best:.3f} at step "
                    f"{best_step} ({1 - best / start:.0%} lower), {end:.3f} at the end"
                )
            else:
                lines.append(
                    f"held-out loss (images it never trained on): {start:.3f} at the start and never lower (lowest "
                    f"{best:.3f}, {end:.3f} at the end): the training did not generalise to them"
                )
        change = 1 - self.match_with / self.match_without if self.match_without else 0.0
        verdict = f"{change:.0%} nearer" if change > 0 else f"{-change:.0%} further: worse, not better"
        lines.append(
            f"generations of {self.match_images} training captions vs their images: distance "
            f"{self.match_without:.3f} without the LoRA, {self.match_with:.3f} with it ({verdict})"
        )
        lines.append(
            "the base model is a tiny random-weight stand-in for a real one, so its pictures are abstract: "
            "compare the two halves of the before/after image (same prompt and seed)"
        )
        return lines


def what_it_learned(model: Model, task: TrainingTask, *, var_dir: Path) -> LearningReport:
    """The held-out loss through the run, how near its own image each of some training captions generates
    without and with the LoRA, and one prompt and seed generated without and with it."""
    from PIL import Image, ImageDraw

    from training.engine.evaluate import caption_match
    from training.engine.generate import generate
    from training.generation import generate_with_model
    from training.storage_io import local_copy, stored_name

    var_dir.mkdir(parents=True, exist_ok=True)
    heldout = [(int(point[0]), float(point[1])) for point in (task.validation_history or []) if len(point) >= 2]

    size = task.resolution or 64
    weights = local_copy(task.weights, var_dir / "weights" / Path(stored_name(task.weights)).name)
    plain = generate(base_model=task.base_model_path, prompt=PROMPT, width=size, height=size, steps=20, seed=SEED)[0]
    [asset] = generate_with_model(model=model, prompt=PROMPT, width=size, height=size, steps=20, seed=SEED)
    with asset.file.open("rb") as handle:
        trained = Image.open(handle).convert("RGB")
    scale = 4  # a 64 px image is hard to see: show it larger, without smoothing
    side = size * scale
    canvas = Image.new("RGB", (2 * side + 30, side + 40), (255, 255, 255))
    for index, (label, picture) in enumerate((("base model", plain), ("with the LoRA", trained))):
        canvas.paste(picture.resize((side, side), Image.Resampling.NEAREST), (10 + index * (side + 10), 30))
        ImageDraw.Draw(canvas).text((10 + index * (side + 10), 8), label, fill=(0, 0, 0))
    comparison = var_dir / "before-after.png"
    canvas.save(comparison)

    held_out = set((task.training_options or {}).get("validation_images") or [])
    captioned = [
        (local_copy(image.asset.file, var_dir / "data" / Path(stored_name(image.asset.file)).name), image.description)
        for image in model.training_images.select_related("asset").order_by("pk")
        if image.asset.public_id not in held_out and image.description
    ][: recipe.CAPTION_MATCH_IMAGES]
    match = caption_match(
        task.base_model_path, captioned, adapter=weights, seeds=list(recipe.CAPTION_MATCH_SEEDS), size=size
    )
    return LearningReport(
        heldout=heldout,
        match_without=match.without,
        match_with=match.with_adapter,
        match_images=len(captioned),
        comparison=comparison,
        generated=Path(asset.file.path),
    )
