"""The real-size GPU benchmark's code, kept working on machines without a GPU: its architectures are
the published ones (counted on the meta device, nothing allocated), and the same code runs tiny ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench import gpu

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass


@pytest.mark.parametrize(
    ("name", "billions", "rel"),
    # The published parameter counts of each denoiser. Stability announced SD 3.5 large at 8.1 B and medium
    # at 2.5 B, counting the fixed positional table (a buffer here) with the weights; Tongyi announced
    # Z-Image at 6 B (its configuration counts 6.15 B), Alibaba Qwen-Image at 20 B (20.4 B), Black Forest Labs
    # FLUX.2 klein at 4 B (3.88 B) and 9 B (9.08 B), FLUX.2 dev at 32 B (32.2 B), HiDream.ai HiDream-I1 at
    # 17 B (17.1 B).
    [("sd15", 0.86, 0.01), ("sdxl", 2.57, 0.01), ("flux", 11.9, 0.01), ("sd35-large", 8.1, 0.015),
     ("sd35-medium", 2.5, 0.015), ("chroma", 8.9, 0.01), ("zimage", 6.0, 0.03), ("qwenimage", 20.0, 0.025),
     ("flux2-klein-4b", 4.0, 0.035), ("flux2-klein-9b", 9.0, 0.01), ("flux2-dev", 32.0, 0.01),
     ("hidream", 17.0, 0.01)],
)  # fmt: skip
def test_the_benchmarked_architectures_have_the_published_sizes(name: str, billions: float, rel: float) -> None:
    model = gpu.random_denoiser(gpu.architecture(name, tiny=False), torch.device("meta"), torch.bfloat16)
    count = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert count / 1e9 == pytest.approx(billions, rel=rel)


@pytest.mark.slow
def test_the_benchmark_trains_each_family_with_the_engines_step_and_counts_its_flops(tmp_path: Path) -> None:
    results = gpu.run(tmp_path, tiny=True, quick=True)
    assert set(results["architectures"]) == {
        "sd15",
        "sdxl",
        "flux",
        "sd35-large",
        "sd35-medium",
        "chroma",
        "zimage",
        "qwenimage",
        "flux2-klein-4b",
        "flux2-klein-9b",
        "flux2-dev",
        "hidream",
    }
    for rows in results["architectures"].values():
        [row] = rows.values()
        assert row["seconds_per_step"] > 0 and row["step_tflop"] > 0 and 0 < row["mfu"] < 1
        assert math.isfinite(row["final_loss"])


def test_without_a_gpu_the_real_size_run_says_why(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the real-size run would start")
    assert gpu.run(tmp_path) == {"skipped": "no CUDA device on this machine"}
