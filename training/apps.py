import os
import sys

from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training workers"

    def ready(self) -> None:
        from django.conf import settings

        # The housekeeping cluster never trains: it has no use for the ML libraries.
        if "qcluster" in sys.argv[1:2] and os.environ.get("Q_CLUSTER_NAME") != settings.HOUSEKEEPING_QUEUE:
            warm_worker_imports()


def warm_worker_imports() -> None:
    """Import the runner and the ML libraries in the cluster's parent process, before it forks its
    workers: each worker then starts its first task (and every task after a recycle) without seconds
    of imports between the pickup and the first image. Importing does not initialise CUDA, so the
    forked workers can still use the GPU."""
    import diffusers
    import peft  # noqa: F401
    import torch  # noqa: F401

    import training.engine.trainer
    import training.tasks  # noqa: F401
    from training.engine import quiet_libraries

    # diffusers resolves its classes lazily: touch the ones every training loads.
    for name in ("AutoencoderKL", "UNet2DConditionModel", "FluxTransformer2DModel", "DDPMScheduler"):
        getattr(diffusers, name)
    quiet_libraries()
