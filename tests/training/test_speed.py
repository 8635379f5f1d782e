"""The engine's speed and memory options: each one trains a LoRA that works, and bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.test_engine import Recorder, make_spec
from training.engine import EngineError, train
from training.engine.speed import resolve_speed

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_compiled_channels_last_and_eager_attention_runs_train_the_same_lora(
    family: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    base = tiny_models[family]
    plain = train(make_spec(base, tmp_path / "plain", steps=4), Recorder())
    extra = {"attention": "eager", "channels_last": True} if family == "sd15" else {}
    compiled = train(make_spec(base, tmp_path / "compiled", steps=4, compile="blocks", **extra), Recorder())
    # Same seed and data: the options change the speed, not what is learned (up to float rounding).
    from safetensors.torch import load_file

    a, b = load_file(plain.weights_path), load_file(compiled.weights_path)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[key], b[key], atol=1e-4) for key in a)


class GraphCounter(Recorder):
    """Records how many graphs the compiler has made by the end of each step."""

    def __init__(self) -> None:
        super().__init__()
        self.graphs: list[int] = []

    def on_progress(self, progress) -> None:  # type: ignore[no-untyped-def]
        import torch._dynamo.utils

        super().on_progress(progress)
        self.graphs.append(int(torch._dynamo.utils.counters["stats"]["unique_graphs"]))


@pytest.mark.slow
def test_a_compiled_mixture_of_experts_model_stops_compiling_after_its_first_steps(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """HiDream's router sends a different number of tokens to each expert every step. Graphs fixed to
    one step's shapes were compiled again at every step (37 new graphs in 8 steps, 10.9 s a step against
    0.02 s uncompiled); with the compiler's dynamic shapes the count settles after the first steps."""
    import torch._dynamo

    torch._dynamo.reset()
    counter = GraphCounter()
    train(make_spec(tiny_models["hidream"], tmp_path, steps=8, compile="blocks"), counter)
    assert counter.steps == list(range(1, 9)) and counter.graphs[0] > 0
    assert counter.graphs[-1] == counter.graphs[2]


def test_automatic_choices_follow_the_device_and_the_run_length() -> None:
    common = {"compile_mode": None, "channels_last": None, "attention": "sdpa", "quantize_base": None}
    # Never automatic on a CPU, however long the run: minutes of C++ compilation for steps no faster there
    # (bench/demo.py; the first demo spent 5 minutes compiling before its first step).
    on_cpu = resolve_speed(**common, device=CPU, steps=1000, is_unet=True, training_type="LORA")
    assert (on_cpu.compile, on_cpu.channels_last) == ("off", False)
    asked = resolve_speed(
        **{**common, "compile_mode": "blocks"}, device=CPU, steps=100, is_unet=True, training_type="LORA"
    )
    assert asked.compile == "blocks"  # asked for, it compiles
    long_gpu = resolve_speed(**common, device=CUDA, steps=1000, is_unet=True, training_type="LORA")
    assert (long_gpu.compile, long_gpu.channels_last, long_gpu.mixed_precision) == ("blocks", True, "bf16")
    assert on_cpu.mixed_precision == "no"  # fp32 on a CPU unless asked
    short_gpu = resolve_speed(**common, device=CUDA, steps=50, is_unet=False, training_type="LORA")
    assert (short_gpu.compile, short_gpu.channels_last) == ("off", False)  # compiling would not pay back


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compile_mode": "fast"}, "compile 'fast' is unknown"),
        ({"attention": "flash9"}, "attention 'flash9' is unknown"),
        ({"quantize_base": "int3"}, "quantize_base 'int3' is unknown"),
        ({"quantize_base": "fp8", "training_type": "FULL"}, "quantize_base needs training_type LORA"),
        ({"mixed_precision": "fp4"}, "mixed_precision 'fp4' is unknown"),
    ],
)
def test_bad_speed_options_are_named(options: dict, message: str) -> None:
    values = {"compile_mode": None, "channels_last": None, "attention": "sdpa", "quantize_base": None}
    values.update({k: v for k, v in options.items() if k != "training_type"})
    with pytest.raises(EngineError, match=message):
        resolve_speed(**values, device=CPU, steps=10, is_unet=True, training_type=options.get("training_type", "LORA"))
