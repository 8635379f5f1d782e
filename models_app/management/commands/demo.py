"""The main job end to end on the embedded defaults: build a tiny base model, make a dataset, train it
through the queue, generate with the result, and say where everything is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from models_app.models import Membership, Model, Team
from models_app.services.accounts import api_key_create, api_key_token, membership_set, team_create
from models_app.services.datasets import model_create, training_image_add
from models_app.services.training import training_start
from training.demo_dataset import make_images
from training.engine.tiny import build_tiny_model

DEMO_TEAM = "Demo team"
DEMO_USER = "demo"
DEMO_PASSWORD = "demo"  # local demo only; the README says to change it anywhere else
TRIGGER_WORD = "zxq"
FINAL_STATUSES = (Model.Status.READY, Model.Status.FAILED, Model.Status.CANCELED, Model.Status.DELETED)


class Command(BaseCommand):
    help = "Train a demo model end to end (tiny base model, 12 generated images, real queue) and generate with it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--images", type=int, default=12, help="number of generated training images (12-20)")
        parser.add_argument("--steps", type=int, default=300, help="training steps")
        parser.add_argument("--timeout", type=int, default=900, help="seconds to wait for the training")
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="where the server will listen")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.monotonic()
        call_command("migrate", interactive=False, verbosity=0)
        base_model = self.ensure_base_model()
        team, secret_token = self.ensure_team_and_key()

        model = model_create(
            team=team,
            name="Demo shapes",
            trigger_word=TRIGGER_WORD,
            short_description="Coloured shapes drawn by the demo",
            parameters={
                "base_model_path": str(base_model),
                "steps": options["steps"],
                "rank": 8,
                "learning_rate": 0.001,
                "batch_size": 2,
                "resolution": 64,
                "optimizer": "adamw",
                "preprocessing_captioning_strategy": "description",
            },
        )
        for image in make_images(options["images"], seed=model.pk):
            training_image_add(model=model, content=image.content, name=image.name, description=image.caption)
        self.stdout.write(f"Model {model.public_id} created with {options['images']} training images")

        task = training_start(model=model)
        self.stdout.write(f"Training task {task.pk} queued; starting a django-q2 cluster to run it")
        model = self.run_queue_until_done(model, timeout=options["timeout"])
        if model.status != Model.Status.READY:
            task.refresh_from_db()
            raise CommandError(f"training ended {model.status}: {task.error_message or 'no message'}")

        from training.generation import generate_with_model

        asset = generate_with_model(
            model=model, prompt=f"{TRIGGER_WORD}, a blue circle on a white background", steps=20
        )[0]
        task.refresh_from_db()
        base_url = options["base_url"].rstrip("/")
        self.stdout.write(self.style.SUCCESS(f"\nDone in {time.monotonic() - started:.0f} s. Your trained model:"))
        rows = [
            ("Model", f"{model.public_id} ({model.status})"),
            ("Weights (LoRA)", Path(task.weights.path).as_posix()),
            ("Generated image", Path(asset.file.path).as_posix()),
            ("Admin", f"{base_url}/admin/ (user {DEMO_USER}, password {DEMO_PASSWORD})"),
            ("API key", secret_token),
            ("Try", f"curl -H 'Authorization: Bearer {secret_token}' {base_url}/v1/models/{model.public_id}"),
        ]
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.stdout.write(f"  {label.ljust(width)}  {value}")

    def ensure_base_model(self) -> Path:
        path = Path(settings.TRAINING_BASE_MODEL_ROOTS[0]) / "tiny-sd15"
        if not (path / "model_index.json").is_file():
            self.stdout.write(f"Building the tiny SD 1.5 base model at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            build_tiny_model("sd15", path)
        return path

    @transaction.atomic
    def ensure_team_and_key(self) -> tuple[Team, str]:
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
        api_key, secret = api_key_create(team=team, name="demo", created_by=user)
        return team, api_key_token(api_key, secret)

    def run_queue_until_done(self, model: Model, *, timeout: int) -> Model:
        """Run a real `qcluster` beside this process and follow the model until its training ends."""
        log_path = Path(settings.VAR_DIR) / "logs" / "qcluster.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.stdout.write(f"  (the cluster's log: {log_path})")
        with open(log_path, "ab") as log:
            cluster = subprocess.Popen(
                [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "qcluster"],
                env=dict(os.environ),  # same settings module and environment as this process
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        last_line = ""
        try:
            while time.monotonic() < deadline:
                model.refresh_from_db()
                task = model.training_tasks.order_by("-created_at").first()
                line = f"  {model.status:<9} {task.status if task else '':<14}"
                if task and task.current_step:
                    # One line per tenth of the run is enough to watch it move.
                    decile = int(task.progress // 10) * 10
                    line += f" {decile:>3}% of {task.total_steps} steps"
                    if task.eta_seconds is not None and decile < 100:
                        line += f", about {task.eta_seconds} s left"
                elif task and task.preprocessing_stage:
                    line += (
                        f" {task.preprocessing_stage} {task.processed_files_count or 0}/{task.total_files_count or 0}"
                    )
                if line != last_line:
                    self.stdout.write(line)
                    last_line = line
                if model.status in FINAL_STATUSES:
                    return model
                if cluster.poll() is not None:
                    raise CommandError(f"the qcluster process exited with code {cluster.returncode}; see {log_path}")
                time.sleep(1)
            raise CommandError(f"training did not finish within {timeout} s")
        finally:
            if cluster.poll() is None:
                os.killpg(cluster.pid, signal.SIGTERM)
                try:
                    cluster.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(cluster.pid, signal.SIGKILL)
