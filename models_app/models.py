"""The domain: teams own projects, assets and models; a model owns its training images, pairs and tasks.

Only the services change these rows (see `models_app/services/`); statuses move along the
transition tables below and nowhere else.
"""

from __future__ import annotations

import uuid
from pathlib import PurePosixPath

from django.conf import settings
from django.db import models
from django.db.models import Q

from contract.parameters import default
from models_app import public_ids


class Team(models.Model):
    public_id = models.CharField(max_length=40, unique=True, default=public_ids.new_team_id, editable=False)
    name = models.CharField(max_length=200)
    max_parallel_trainings = models.PositiveIntegerField(
        null=True, blank=True, help_text="Trainings queued or running at once; empty means the platform default."
    )
    credit_balance = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Credits left; empty means unlimited. Changed only through the credit ledger.",
    )
    webhook_secret = models.CharField(max_length=64, default=public_ids.new_secret, editable=False)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="teams")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(credit_balance__isnull=True) | Q(credit_balance__gte=0), name="credit_balance_not_negative"
            )
        ]

    def __str__(self) -> str:
        # Names are not unique (two teams may both be "Studio"): every select, filter and column shows the id.
        return f"{self.name} ({self.public_id})"


class Project(models.Model):
    public_id = models.CharField(max_length=40, unique=True, default=public_ids.new_project_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="projects")
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="project_name_unique_in_team")]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team}, {self.role}"


class ApiKey(models.Model):
    """A team's API key. Only a SHA-256 of the secret is kept; the secret is shown once, at creation."""

    key = models.CharField(max_length=40, unique=True, default=public_ids.new_api_key_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True)
    secret_hash = models.CharField(max_length=64, editable=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.key} ({self.name})" if self.name else self.key

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


def asset_upload_to(instance: Asset, filename: str) -> str:
    suffix = PurePosixPath(filename).suffix.lower()
    return f"assets/{instance.team.public_id}/{instance.public_id}{suffix}"


def asset_thumbnail_upload_to(instance: Asset, filename: str) -> str:
    return f"thumbnails/{instance.team.public_id}/{PurePosixPath(filename).name}"


class Asset(models.Model):
    """A stored image file: uploaded once and reused by id, or produced by a generation."""

    class Kind(models.TextChoices):
        UPLOAD = "upload", "Upload"
        GENERATED = "generated", "Generated"

    public_id = models.CharField(max_length=40, unique=True, default=public_ids.new_asset_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="assets")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="assets")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.UPLOAD)
    file = models.FileField(upload_to=asset_upload_to, max_length=300)
    original_name = models.CharField(max_length=255)
    format = models.CharField(max_length=16)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    # A small copy of the whole image for the admin's pages, made on first view (services/thumbnails.py).
    thumbnail = models.FileField(upload_to=asset_thumbnail_upload_to, max_length=300, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.public_id


class ModelStatus(models.TextChoices):
    NEW = "new", "New"
    QUEUED = "queued", "Queued"
    TRAINING = "training", "Training"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"
    DELETED = "deleted", "Deleted"


class Model(models.Model):
    """A custom model: a dataset of training images and, once trained, its weights."""

    Status = ModelStatus

    class Type(models.TextChoices):
        SUBJECT = "subject", "Subject"
        PRODUCT = "product", "Product"
        STYLE = "style", "Style"
        PERSON = "person", "Person"
        EDIT = "edit", "Edit (before/after pairs)"

    public_id = models.CharField(max_length=40, unique=True, default=public_ids.new_model_id, editable=False)
    # Seed 003's tasks point at their model by UUID (`entity_id`).
    uuid = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="models")
    project = models.ForeignKey(Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="models")
    name = models.CharField(max_length=200)
    short_description = models.TextField(blank=True)
    type = models.CharField(max_length=16, choices=Type.choices, default=Type.SUBJECT)
    trigger_word = models.CharField(max_length=100, blank=True)
    parameters = models.JSONField(default=dict, blank=True, help_text="Training parameters overriding the defaults.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW, db_index=True)
    # The task whose weights this model serves; set in the transaction that completes that task.
    trained_task = models.ForeignKey(
        "TrainingTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    # The model's newest training task, in any state: what the API shows as `trainingProgress`. Set in the
    # transaction that creates the task (training_start, the only place tasks of a model are made), so a
    # read joins it with the model instead of searching the model's tasks for the newest one.
    latest_task = models.ForeignKey(
        "TrainingTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=ModelStatus.values), name="model_status_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"


class TrainingImage(models.Model):
    """One image of a model's dataset. Its public id is its asset's id (seed 004)."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="training_images")
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="training_images")
    name = models.CharField(max_length=255)
    description = models.TextField(blank=True, help_text="The caption written for this image.")
    automatic_captioning = models.TextField(blank=True)
    sidecar_caption = models.TextField(
        blank=True, help_text="The text of the .txt file beside the image when it was imported (kohya style)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["model", "asset"], name="training_image_asset_unique")]

    def __str__(self) -> str:
        return self.name

    @property
    def public_id(self) -> str:
        return self.asset.public_id


class Pair(models.Model):
    """A before/after pair of a model's training images, with the instruction that turns one into the other."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="pairs")
    source = models.ForeignKey(TrainingImage, on_delete=models.CASCADE, related_name="pairs_as_source")
    target = models.ForeignKey(TrainingImage, on_delete=models.CASCADE, related_name="pairs_as_target")
    instruction = models.TextField(blank=True)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.CheckConstraint(condition=~Q(source=models.F("target")), name="pair_source_is_not_target"),
        ]

    def __str__(self) -> str:
        return f"{self.source_id} -> {self.target_id}"

    @property
    def extra_source_public_ids(self) -> list[str]:
        """The further sources' asset ids, in order (prefetch `extra_sources__image__asset` for a list)."""
        return [extra.image.asset.public_id for extra in self.extra_sources.all()]


class PairSource(models.Model):
    """A further source image of a pair, after `Pair.source`: a reference image for the families whose
    pipelines condition on several (FLUX.2 takes a list). Beyond seed 004, whose pair has one source."""

    pair = models.ForeignKey(Pair, on_delete=models.CASCADE, related_name="extra_sources")
    image = models.ForeignKey(TrainingImage, on_delete=models.CASCADE, related_name="pair_sources")
    position = models.PositiveIntegerField()

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["pair", "position"], name="pair_source_position_unique")]

    def __str__(self) -> str:
        return f"{self.pair_id}[{self.position}] {self.image_id}"


def training_output_upload_to(instance: TrainingTask, filename: str) -> str:
    return f"training/{instance.id}/{PurePosixPath(filename).name}"


class TaskStatus(models.TextChoices):
    PENDING = "PENDING"
    PREPROCESSING = "PREPROCESSING"
    TRAINING = "TRAINING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class TrainingTask(models.Model):
    """One training run of a model: every field of seed 003's `TrainingTask`, plus the worker's bookkeeping."""

    Status = TaskStatus

    class TrainingType(models.TextChoices):
        LORA = "LORA"
        FULL = "FULL"

    class EntityType(models.TextChoices):
        PRODUCT = "PRODUCT"
        SUBJECT = "SUBJECT"
        STYLE = "STYLE"
        PERSON = "PERSON"

    class CaptioningStrategy(models.TextChoices):
        TRIGGER_ONLY = "trigger_only"
        DESCRIPTION = "description"
        FILENAME = "filename"
        AUTOMATIC = "automatic"

    class Priority(models.IntegerChoices):
        LOW = 0
        NORMAL = 1
        HIGH = 2
        URGENT = 3

    ACTIVE_STATUSES = (Status.PENDING, Status.PREPROCESSING, Status.TRAINING)
    RUNNING_STATUSES = (Status.PREPROCESSING, Status.TRAINING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="training_tasks")
    # Stored in the `entity_id` column as the model's UUID, the way seed 003 names it.
    model = models.ForeignKey(
        Model, to_field="uuid", db_column="entity_id", on_delete=models.CASCADE, related_name="training_tasks"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    origin_instance = models.CharField(max_length=100, default="unknown")
    origin_zone = models.CharField(max_length=100, null=True, blank=True)
    origin_version = models.CharField(max_length=100, null=True, blank=True)
    origin_tenant_id = models.CharField(max_length=100, null=True, blank=True)

    training_type = models.CharField(max_length=8, choices=TrainingType.choices, default=default("training_type"))
    entity_type = models.CharField(max_length=16, choices=EntityType.choices, default=EntityType.PRODUCT)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    progress = models.FloatField(default=0.0, help_text="Percent of the steps done, 0 to 100.")
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=default("steps"))
    eta_seconds = models.PositiveIntegerField(null=True, blank=True)
    trigger_word = models.CharField(max_length=100)
    training_folder = models.CharField(max_length=500, default="", blank=True)

    rank = models.PositiveIntegerField(default=default("rank"))
    save_every = models.PositiveIntegerField(default=default("save_every"))
    max_step_saves_to_keep = models.PositiveIntegerField(default=default("max_step_saves_to_keep"))
    batch_size = models.PositiveIntegerField(default=default("batch_size"))
    steps = models.PositiveIntegerField(default=default("steps"))
    learning_rate = models.FloatField(default=default("learning_rate"))
    gradient_accumulation = models.PositiveIntegerField(default=default("gradient_accumulation"))
    optimizer = models.CharField(max_length=32, default=default("optimizer"))
    bypass_guidance_embedding = models.BooleanField(default=default("bypass_guidance_embedding"))
    # Always the resolved base model (services: `TRAINING_DEFAULT_BASE_MODEL` when none is given).
    base_model_path = models.CharField(max_length=500)
    local_model_path = models.CharField(max_length=500, null=True, blank=True)
    sample_every = models.PositiveIntegerField(default=default("sample_every"))
    sample_steps = models.PositiveIntegerField(default=default("sample_steps"))
    sample_prompts = models.JSONField(default=list, blank=True)

    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    logs = models.TextField(default="", blank=True)
    error_message = models.TextField(null=True, blank=True)
    webhook_url = models.CharField(max_length=2000, default="", blank=True)
    # Seed 003's names, kept for its clients; they hold django-q2's task ids.
    celery_training_task_id = models.CharField(max_length=64, null=True, blank=True)
    celery_preprocessing_task_id = models.CharField(max_length=64, null=True, blank=True)
    celery_chain_task_id = models.CharField(max_length=64, null=True, blank=True)

    preprocessing_stage = models.CharField(max_length=32, null=True, blank=True)
    processed_files_count = models.PositiveIntegerField(null=True, blank=True)
    total_files_count = models.PositiveIntegerField(null=True, blank=True)
    preprocessing_started_at = models.DateTimeField(null=True, blank=True)
    preprocessing_completed_at = models.DateTimeField(null=True, blank=True)
    source_images = models.JSONField(default=list, blank=True)
    processed_dataset_path = models.CharField(max_length=500, null=True, blank=True)
    preprocessing_transforms = models.JSONField(null=True, blank=True)
    preprocessing_captioning_strategy = models.CharField(
        max_length=16, choices=CaptioningStrategy.choices, default=default("preprocessing_captioning_strategy")
    )
    preprocessing_captioning_prompt = models.TextField(null=True, blank=True)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=default("priority"))
    priority_changed_at = models.DateTimeField(null=True, blank=True)

    # Beyond seed 003: what the engine needs and what the worker keeps.
    resolution = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: the base model's native size.")
    lora_alpha = models.FloatField(null=True, blank=True, help_text="Empty: equal to the rank.")
    seed = models.PositiveIntegerField(default=default("seed"))
    loss = models.FloatField(null=True, blank=True, help_text="The last reported training loss.")
    loss_history = models.JSONField(
        default=list,
        blank=True,
        help_text="[step, loss] points, or [step, loss, smoothed loss] where the engine smooths; thinned to a bounded count.",
    )
    validation_history = models.JSONField(
        default=list, blank=True, help_text="[step, validation loss] points on the held-out images, thinned alike."
    )
    worker_id = models.CharField(max_length=200, blank=True)
    gpus = models.PositiveSmallIntegerField(
        default=default("gpus"), help_text="GPUs of one worker machine the training runs on."
    )
    machine = models.CharField(
        max_length=200, blank=True, help_text="The worker machine running it (WorkerMachine.name); empty when none."
    )
    devices = models.JSONField(
        default=list, blank=True, help_text="The device indices it holds on that machine while it runs."
    )
    attempt_count = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.CharField(
        max_length=16,
        blank=True,
        choices=[
            ("worker_lost", "Worker lost"),
            ("out_of_memory", "Out of GPU memory"),
            ("bad_input", "Bad dataset or configuration"),
            ("internal", "Internal error"),
        ],
    )
    weights = models.FileField(upload_to=training_output_upload_to, max_length=300, blank=True)
    weights_kohya = models.FileField(upload_to=training_output_upload_to, max_length=300, blank=True)
    training_options = models.JSONField(
        default=dict, blank=True, help_text="Engine options beyond seed 003's fields (scheduler, dropout, ...)."
    )
    stage_seconds = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "Wall seconds spent per phase, summed over every attempt: queue, downloading, preprocessing, "
            "caching, loading, training, exporting."
        ),
    )
    attempt_history = models.JSONField(
        default=list,
        blank=True,
        help_text="One entry per attempt: its worker, start, its own seconds per phase, and how it ended.",
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=TaskStatus.values), name="task_status_valid"),
            models.CheckConstraint(condition=Q(priority__gte=0, priority__lte=3), name="task_priority_range"),
            models.CheckConstraint(condition=Q(progress__gte=0, progress__lte=100), name="task_progress_range"),
            # The database, not only the service, guarantees one live training per model, so
            # concurrent starts cannot both succeed.
            models.UniqueConstraint(
                fields=["model"],
                condition=Q(status__in=["PENDING", "PREPROCESSING", "TRAINING"]),
                name="one_active_task_per_model",
            ),
        ]
        indexes = [models.Index(fields=["status", "-priority", "created_at"], name="task_queue_order")]

    def __str__(self) -> str:
        # No status here: a page title or breadcrumb rendered from it would go stale while the task runs.
        return f"training task {str(self.id)[:8]}"


class WorkerMachine(models.Model):
    """A machine that runs trainings, as its workers advertise it: its GPUs (device indices 0..gpus-1 as
    its workers see them; CPU processes on a CPU machine). A task holds `gpus` of one machine's devices
    while it runs (TrainingTask.machine, .devices); no two running tasks hold the same device."""

    name = models.CharField(max_length=200, unique=True, help_text="TRAINING_MACHINE_NAME, else the host name.")
    gpus = models.PositiveSmallIntegerField(help_text="Devices its trainings share out (TRAINING_GPUS).")
    device_type = models.CharField(max_length=16, default="cuda", help_text="cuda, or cpu for CPU processes.")
    last_seen_at = models.DateTimeField(help_text="When one of its workers last looked for work.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.CheckConstraint(condition=Q(gpus__gte=1), name="machine_has_a_device")]

    def __str__(self) -> str:
        return self.name


def sample_upload_to(instance: TrainingSample, filename: str) -> str:
    return f"training/{instance.task_id}/samples/{PurePosixPath(filename).name}"


class TrainingSample(models.Model):
    """An image generated for a sample prompt at some step of a training."""

    task = models.ForeignKey(TrainingTask, on_delete=models.CASCADE, related_name="samples")
    step = models.PositiveIntegerField()
    prompt = models.TextField()
    index = models.PositiveSmallIntegerField(default=0)
    file = models.FileField(upload_to=sample_upload_to, max_length=300)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["step", "index"]
        constraints = [models.UniqueConstraint(fields=["task", "step", "index"], name="sample_unique_per_step")]

    def __str__(self) -> str:
        return f"step {self.step}: {self.prompt}"


def checkpoint_upload_to(instance: TrainingCheckpoint, filename: str) -> str:
    return f"training/{instance.task_id}/checkpoints/{instance.folder_name}/{PurePosixPath(filename).name}"


class TrainingCheckpoint(models.Model):
    """A checkpoint mirrored to shared storage, so that a task can resume on any worker.

    `snapshot` rows are the worker's crash-safety saves (every few minutes or steps, whatever
    `save_every` says): one per task, used to resume, never listed to users as a checkpoint.
    """

    task = models.ForeignKey(TrainingTask, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveIntegerField()
    snapshot = models.BooleanField(
        default=False, help_text="A crash-safety snapshot of the worker, not one of the user's checkpoints."
    )
    files = models.JSONField(default=dict, help_text="File name -> storage name.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-step"]
        constraints = [
            models.UniqueConstraint(fields=["task", "step", "snapshot"], name="checkpoint_unique_per_step_and_kind")
        ]

    def __str__(self) -> str:
        return f"{self.task_id} {'snapshot' if self.snapshot else 'step'} {self.step}"

    @property
    def folder_name(self) -> str:
        """The folder's name on a worker's disk (and in storage): `step-0000500` or `snapshot-0000500`."""
        return f"{'snapshot' if self.snapshot else 'step'}-{self.step:07d}"


class WebhookDelivery(models.Model):
    """One event sent (or to be sent) to a task's webhook_url, with every attempt's outcome."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="webhook_deliveries")
    task = models.ForeignKey(
        TrainingTask, null=True, blank=True, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    event = models.CharField(max_length=32)
    url = models.CharField(max_length=2000)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"

    def __str__(self) -> str:
        return f"{self.event} -> {self.url} ({self.status})"


# Allowed status changes. Services check these (and the tests enumerate them); anything else is a bug.
TASK_TRANSITIONS: dict[str, frozenset[str]] = {
    TrainingTask.Status.PENDING: frozenset(
        {TrainingTask.Status.PREPROCESSING, TrainingTask.Status.CANCELLED, TrainingTask.Status.FAILED}
    ),
    TrainingTask.Status.PREPROCESSING: frozenset(
        {
            TrainingTask.Status.TRAINING,
            TrainingTask.Status.PENDING,  # re-queued after its worker was lost
            TrainingTask.Status.FAILED,
            TrainingTask.Status.CANCELLED,
        }
    ),
    TrainingTask.Status.TRAINING: frozenset(
        {
            TrainingTask.Status.COMPLETED,
            TrainingTask.Status.PENDING,
            TrainingTask.Status.FAILED,
            TrainingTask.Status.CANCELLED,
        }
    ),
    TrainingTask.Status.COMPLETED: frozenset(),
    TrainingTask.Status.FAILED: frozenset(),
    TrainingTask.Status.CANCELLED: frozenset(),
}

# A model's status follows its latest task.
MODEL_STATUS_FOR_TASK: dict[str, str] = {
    TrainingTask.Status.PENDING: Model.Status.QUEUED,
    TrainingTask.Status.PREPROCESSING: Model.Status.TRAINING,
    TrainingTask.Status.TRAINING: Model.Status.TRAINING,
    TrainingTask.Status.COMPLETED: Model.Status.READY,
    TrainingTask.Status.FAILED: Model.Status.FAILED,
    TrainingTask.Status.CANCELLED: Model.Status.CANCELED,
}


class CreditEntry(models.Model):
    """One change of a team's credit balance. The balance is the sum of its entries since the last grant."""

    class Kind(models.TextChoices):
        GRANT = "grant", "Grant"
        RESERVE = "reserve", "Reserved for a training"
        REFUND = "refund", "Refund of unused reservation"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="credit_entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.DecimalField(max_digits=14, decimal_places=2, help_text="Positive adds credits, negative takes.")
    balance_after = models.DecimalField(max_digits=14, decimal_places=2)
    task = models.ForeignKey(
        TrainingTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="credit_entries"
    )
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "credit entries"
        constraints = [
            # A task is reserved for once and refunded at most once, whatever retries happen.
            models.UniqueConstraint(
                fields=["task", "kind"], condition=Q(task__isnull=False), name="one_credit_entry_per_task_and_kind"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount}"


class JobStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELED = "canceled", "Canceled"


class GenerationJob(models.Model):
    """A request to generate images with a ready model, run on the training workers."""

    Status = JobStatus
    FINAL_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)

    public_id = models.CharField(max_length=40, unique=True, default=public_ids.new_job_id, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="generation_jobs")
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="generation_jobs")
    prompt = models.TextField()
    negative_prompt = models.TextField(blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    num_images = models.PositiveSmallIntegerField(default=1)
    steps = models.PositiveSmallIntegerField(default=25)
    seed = models.PositiveIntegerField(default=0)
    guidance_scale = models.FloatField(default=7.5)
    source_image = models.ForeignKey(
        Asset, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", help_text="Edit models: the input."
    )
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.PENDING, db_index=True)
    images = models.ManyToManyField(Asset, blank=True, related_name="generation_jobs")
    error_message = models.TextField(blank=True)
    worker_id = models.CharField(max_length=200, blank=True)
    attempt_count = models.PositiveIntegerField(default=0)
    queue_task_id = models.CharField(max_length=64, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Renewed by the worker while it generates; past it, the reaper re-queues the job (or fails it).
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=JobStatus.values), name="job_status_valid"),
            models.CheckConstraint(condition=Q(num_images__gte=1, num_images__lte=4), name="job_num_images_range"),
        ]

    def __str__(self) -> str:
        return self.public_id
