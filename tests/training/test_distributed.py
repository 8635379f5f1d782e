"""One training on several processes: torchrun with the gloo backend, two CPU ranks (CI has no GPU).

The worker's launcher (training/launch.py) starts the ranks and serves rank 0's callbacks; these
tests drive it directly with engine callbacks (no database) and compare with single-process runs.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.training.test_engine import Recorder, make_spec
from training.engine import EngineError, TrainingCancelled, train
from training.engine.distributed import Ranks, Share, check_global_batch
from training.engine.export import FULL_WEIGHTS_NAME, LORA_WEIGHTS_NAME
from training.launch import RanksFailed, train_on_ranks

pytestmark = pytest.mark.engine

# Two ranks against one, same global batch and seed, float32 on a CPU. The ranks differ from the single
# process only in the order of floating-point sums (the gradient all-reduce, the split batch's matmuls).
# Tolerance: the relative Frobenius distance over every trained tensor, |w2 - w1| / |w1| <= 1e-4.
# Measured: 7e-7 after 1 step, 1.3e-6 after 6 (two different seeds: 1.4). Element-wise the first AdamW
# steps amplify sum-order noise where a gradient is near AdamW's epsilon (3.7e-3 relative in rare
# elements after one step), which is why the bound is on the whole, not on each element.
WEIGHT_TOLERANCE = 1e-4
LORA = {"steps": 6, "batch_size": 2, "learning_rate": 5e-3, "resolution": 64, "save_every": 3}
FULL = {**LORA, "training_type": "FULL", "learning_rate": 1e-4}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|a - b| / |a| over all tensors together."""
    assert a.keys() == b.keys()
    difference = sum(float((a[name].float() - b[name].float()).pow(2).sum()) for name in a)
    return math.sqrt(difference / sum(float(a[name].float().pow(2).sum()) for name in a))


def lora(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output_dir / LORA_WEIGHTS_NAME))


class Killer(Recorder):
    """Kills rank 1 of its run (found by the launcher's bridge address in its environment) at `step`."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.killed = 0

    def on_progress(self, progress) -> None:
        super().on_progress(progress)
        if progress.step == self.step and not self.killed:
            self.killed = rank_pid(1)
            os.kill(self.killed, signal.SIGKILL)


def rank_pid(rank: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and any(v.startswith(b"TRAINING_BRIDGE_ADDRESS=") for v in environ):
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank}")


def test_two_ranks_reach_the_weights_of_one_with_the_same_global_batch(tiny_models, tmp_path: Path) -> None:
    single = make_spec(tiny_models["sd15"], tmp_path / "one", **LORA)
    train(single, Recorder())
    double = make_spec(tiny_models["sd15"], tmp_path / "two", **LORA)
    recorder = Recorder()
    result = train_on_ranks(double, recorder, processes=2, work_dir=tmp_path / "two-work")

    one, two = lora(single.output_dir), lora(double.output_dir)
    assert distance(one, two) < WEIGHT_TOLERANCE
    other_seed = make_spec(tiny_models["sd15"], tmp_path / "seed", seed=7, **LORA)
    train(other_seed, Recorder())
    assert distance(one, lora(other_seed.output_dir)) > 0.1  # the measure tells runs apart
    # Rank 0 reported through the launcher: every step, the checkpoint, the stages; one set of files.
    assert recorder.steps[-1] == 6 and recorder.checkpoints == [3]
    assert recorder.stages[0] == "preprocessing" and recorder.stages[-1] == "exporting"
    assert result.weights_path == double.output_dir / LORA_WEIGHTS_NAME and result.steps_done == 6
    assert sorted(p.name for p in double.checkpoint_dir.iterdir()) == ["step-0000003"]


def test_a_checkpoint_of_two_ranks_resumes_on_one(tiny_models, tmp_path: Path) -> None:
    single = make_spec(tiny_models["sd15"], tmp_path / "one", **LORA)
    train(single, Recorder())
    double = make_spec(tiny_models["sd15"], tmp_path / "two", **LORA)
    train_on_ranks(double, Recorder(), processes=2, work_dir=tmp_path / "two-work")
    # A new attempt on a one-GPU worker finds the two-rank run's checkpoint at step 3.
    resumed = make_spec(tiny_models["sd15"], tmp_path / "resumed", **LORA)
    shutil.copytree(double.checkpoint_dir / "step-0000003", resumed.checkpoint_dir / "step-0000003")
    recorder = Recorder()
    result = train(resumed, recorder)
    assert result.resumed_from_step == 3 and recorder.steps[0] == 4
    assert distance(lora(single.output_dir), lora(resumed.output_dir)) < WEIGHT_TOLERANCE


def test_a_sharded_full_fine_tune_matches_one_process_and_exports_whole_weights(tiny_models, tmp_path: Path) -> None:
    single = make_spec(tiny_models["sd15"], tmp_path / "one", **FULL)
    train(single, Recorder())
    double = make_spec(tiny_models["sd15"], tmp_path / "two", **FULL)
    train_on_ranks(double, Recorder(), processes=2, work_dir=tmp_path / "two-work")

    one, two = (
        load_file(str(single.output_dir / FULL_WEIGHTS_NAME)),
        load_file(str(double.output_dir / FULL_WEIGHTS_NAME)),
    )
    assert {name: t.shape for name, t in two.items()} == {name: t.shape for name, t in one.items()}
    base = load_file(str(tiny_models["sd15"] / "unet" / "diffusion_pytorch_model.safetensors"))
    moved = distance(base, one)
    assert moved > 1e-5  # the weights trained
    assert distance(one, two) < WEIGHT_TOLERANCE * max(1.0, moved / 1e-3)
    # The sharded checkpoint was gathered into the single-process format: it resumes on one rank.
    resumed = make_spec(tiny_models["sd15"], tmp_path / "resumed", **FULL)
    shutil.copytree(double.checkpoint_dir / "step-0000003", resumed.checkpoint_dir / "step-0000003")
    assert train(resumed, Recorder()).resumed_from_step == 3
    assert distance(one, load_file(str(resumed.output_dir / FULL_WEIGHTS_NAME))) < WEIGHT_TOLERANCE


def test_a_cancel_reaches_every_rank(tiny_models, tmp_path: Path) -> None:
    spec = make_spec(tiny_models["sd15"], tmp_path / "run", **{**LORA, "steps": 50})
    recorder = Recorder(cancel_after=2)
    with pytest.raises(TrainingCancelled):
        train_on_ranks(spec, recorder, processes=2, work_dir=tmp_path / "work")
    assert 2 <= recorder.steps[-1] < 50
    assert not (spec.output_dir / LORA_WEIGHTS_NAME).exists()


def test_a_killed_rank_fails_the_run_and_stops_the_others(tiny_models, tmp_path: Path) -> None:
    spec = make_spec(tiny_models["sd15"], tmp_path / "run", **{**LORA, "steps": 500, "save_every": 1000})
    killer = Killer(step=2)
    with pytest.raises(RanksFailed) as failure:
        train_on_ranks(spec, killer, processes=2, work_dir=tmp_path / "work")
    assert killer.killed and killer.steps[-1] < 500
    assert "exited" in str(failure.value) or "crashed" in str(failure.value)
    with pytest.raises(AssertionError):
        rank_pid(0)  # no rank outlives the run
    assert not (spec.output_dir / LORA_WEIGHTS_NAME).exists()


def test_a_user_error_of_a_distributed_run_is_the_engines_error(tiny_models, tmp_path: Path) -> None:
    spec = make_spec(tiny_models["sd15"], tmp_path / "run", **{**LORA, "lr_scheduler": "sideways"})
    with pytest.raises(EngineError, match="lr_scheduler 'sideways' is unknown"):
        train_on_ranks(spec, Recorder(), processes=2, work_dir=tmp_path / "work")


def test_the_global_batch_is_split_evenly_or_refused() -> None:
    rank1 = Ranks(rank=1, world=2)
    rows = Share.of(rank1, 4, 1)
    assert rows.rows(0) == slice(2, 4) and rows.weight(slice(2, 4)) == 1.0
    dealt = Share.of(rank1, 1, 4)  # one image per micro-batch: whole micro-batches dealt out in turn
    assert [dealt.rows(micro) for micro in range(4)] == [None, slice(0, 1), None, slice(0, 1)]
    assert dealt.weight(slice(0, 1)) == 0.5
    check_global_batch(1, 3, 1)
    with pytest.raises(EngineError, match="with gpus 2, batch_size \\(3\\) or gradient_accumulation \\(1\\)"):
        check_global_batch(2, 3, 1)


class Suspender(Recorder):
    """The worker shutting down at step 2: rank 0 is told to suspend, and every rank stops with it."""

    def should_suspend(self) -> bool:
        return bool(self.steps) and self.steps[-1] >= 2


def test_a_worker_shutting_down_suspends_every_rank_at_a_snapshot(tiny_models, tmp_path: Path) -> None:
    from training.engine import TrainingSuspended

    spec = make_spec(tiny_models["sd15"], tmp_path / "run", **{**LORA, "steps": 50})
    with pytest.raises(TrainingSuspended) as suspended:
        train_on_ranks(spec, Suspender(), processes=2, work_dir=tmp_path / "work")
    step = suspended.value.step
    assert step >= 2 and (spec.checkpoint_dir / f"snapshot-{step:07d}").is_dir()
    resumed = Recorder()
    assert train_on_ranks(spec, resumed, processes=2, work_dir=tmp_path / "work").resumed_from_step == step
    assert resumed.steps[0] == step + 1
