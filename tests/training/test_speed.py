"""The engine's speed and memory options: each one trains a LoRA that works, and bad values are named."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_engine import Recorder, make_spec
from tests.training.test_training_integration import assert_lora_changes_output
from training.engine import EngineError, train
from training.engine.speed import Float8Linear, quantize_linears, resolve_speed

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_a_float8_linear_holds_half_the_bytes_and_computes_what_the_linear_did() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128).to(torch.bfloat16)
    quantized = Float8Linear(linear)
    assert quantized.weight.dtype == torch.float8_e4m3fn and not quantized.weight.requires_grad
    assert quantized.weight.nbytes == linear.weight.nbytes // 2

    x = torch.randn(4, 256, dtype=torch.bfloat16, requires_grad=True)
    expected = linear(x)
    got = quantized(x)
    relative = (got.float() - expected.float()).norm() / expected.float().norm()
    assert relative < 0.05  # e4m3 keeps ~2 significant digits per weight

    # The input's gradient goes through the float8 weight too (LoRA needs it to reach earlier layers).
    (grad_expected,) = torch.autograd.grad(expected.float().sum(), x)
    (grad_got,) = torch.autograd.grad(got.float().sum(), x)
    assert (grad_got.float() - grad_expected.float()).norm() / grad_expected.float().norm() < 0.05


def test_quantize_linears_swaps_big_linears_only() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(128, 128), torch.nn.Sequential(torch.nn.Linear(128, 64)), torch.nn.Linear(64, 8)
    )
    assert quantize_linears(model) == 2
    assert isinstance(model[0], Float8Linear) and isinstance(model[1][0], Float8Linear)
    assert type(model[2]) is torch.nn.Linear  # too small to be worth it


@pytest.mark.slow
def test_fp8_base_weights_train_a_lora_that_loads_in_a_plain_pipeline(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    base = tiny_models["sd15"]
    result = train(make_spec(base, tmp_path, quantize_base="fp8", steps=12), Recorder())
    assert result.final_loss is not None and np.isfinite(result.final_loss)
    assert_lora_changes_output(base, result.weights_path)


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


def test_automatic_choices_follow_the_device_and_the_run_length() -> None:
    common = {"compile_mode": None, "channels_last": None, "attention": "sdpa", "quantize_base": None}
    on_cpu = resolve_speed(**common, device=CPU, steps=1000, is_unet=True, training_type="LORA")
    has_compiler = shutil.which("c++") is not None or shutil.which("g++") is not None
    assert (on_cpu.compile, on_cpu.channels_last) == ("blocks" if has_compiler else "off", False)
    short_cpu = resolve_speed(**common, device=CPU, steps=100, is_unet=True, training_type="LORA")
    assert short_cpu.compile == "off"
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
