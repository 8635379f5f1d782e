"""Scaling out one training: the same LoRA run (same global batch, seed and steps) on one process and on
two ranks launched by the worker's launcher (torchrun, gloo between CPU processes, or NCCL between GPUs
when this machine has two), timed over the training loop only (from the second reported step on, so
start-up, caching and the first step's warm-up are not counted)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from training.engine import SilentCallbacks, TrainingSpec, train
from training.engine.spec import Progress


class Clock(SilentCallbacks):
    """The engine's own elapsed time at each reported step."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def on_progress(self, progress: Progress) -> None:
        self.points.append((progress.step, progress.elapsed_seconds))

    def steps_per_second(self) -> float:
        (first_step, first_time), (last_step, last_time) = self.points[1], self.points[-1]
        return (last_step - first_step) / max(1e-9, last_time - first_time)


def spec_for(base: Path, images: list[Any], out: Path, *, steps: int, device: str) -> TrainingSpec:
    return TrainingSpec(
        base_model=str(base),
        output_dir=out,
        images=images,
        trigger_word="zxq",
        rank=8,
        steps=steps,
        batch_size=4,
        learning_rate=1e-4,
        optimizer="adamw",
        resolution=128,
        captioning_strategy="description",
        save_every=100_000,
        progress_interval_seconds=0.0,
        device=device,
        compile="off",
    )


def run(scratch: Path, base: Path, *, steps: int) -> dict[str, Any]:
    import torch

    from training.engine.testing.images import write_dataset
    from training.launch import train_on_ranks

    images = write_dataset(scratch / "data", 8)
    gpus = torch.cuda.device_count()
    device = "cuda" if gpus >= 2 else "cpu"
    single = Clock()
    train(spec_for(base, images, scratch / "one", steps=steps, device=device), single)
    # On a CPU each rank gets cores / 2 threads: a one-process run at that many threads is what each
    # rank would do alone, so two ranks against twice it is the parallel efficiency of the ranks.
    threads = torch.get_num_threads()
    per_rank = Clock()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    try:
        train(spec_for(base, images, scratch / "rank-alone", steps=steps, device=device), per_rank)
    finally:
        torch.set_num_threads(threads)
    double = Clock()
    train_on_ranks(
        spec_for(base, images, scratch / "two", steps=steps, device=device),
        double,
        processes=2,
        devices=[0, 1] if device == "cuda" else None,
        work_dir=scratch / "two-work",
    )
    one, two, alone = single.steps_per_second(), double.steps_per_second(), per_rank.steps_per_second()
    return {
        "device": device,
        "cores": os.cpu_count(),
        "steps": steps,
        "global_batch": 4,
        "one_process_steps_per_second": round(one, 3),
        "two_ranks_steps_per_second": round(two, 3),
        "scaling": round(two / one, 2),
        "one_process_rank_threads_steps_per_second": round(alone, 3),
        "efficiency": round(two / (2 * alone), 2),
        "gpu_scaling": "measured" if device == "cuda" else "no machine with two GPUs here",
    }
