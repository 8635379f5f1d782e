"""The real-size GPU benchmark's code, kept working on machines without a GPU: its architectures are
the published ones (counted on the meta device, nothing allocated), and the same code runs tiny ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import gpu

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass


@pytest.mark.parametrize("name", list(gpu.architectures()))
def test_the_benchmarked_architectures_have_the_published_sizes(name: str) -> None:
    """Each architecture's parameter count is what its makers published (`published_billions` in the family
    folder's bench.py, where the announcements are quoted), within the rounding of the announcement."""
    spec = gpu.architecture(name, tiny=False)
    model = gpu.random_denoiser(spec, torch.device("meta"), torch.bfloat16)
    count = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert count / 1e9 == pytest.approx(spec["published_billions"], rel=spec["size_tolerance"])


@pytest.mark.slow
def test_the_benchmark_trains_each_family_with_the_engines_step_and_counts_its_flops(tmp_path: Path) -> None:
    results = gpu.run(tmp_path, tiny=True, quick=True)
    assert list(results["architectures"]) == list(gpu.architectures())
    for rows in results["architectures"].values():
        [row] = rows.values()
        assert row["seconds_per_step"] > 0 and row["step_tflop"] > 0 and 0 < row["mfu"] < 1
        assert math.isfinite(row["final_loss"])


def test_without_a_gpu_the_real_size_run_says_why(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the real-size run would start")
    assert gpu.run(tmp_path) == {"skipped": "no CUDA device on this machine"}
