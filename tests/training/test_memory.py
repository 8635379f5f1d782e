"""The memory levers (training/engine/memory.py): torchao-quantized frozen base weights and block
swapping. On the CPU, the same code paths a GPU run takes: torchao's weight-only formats compute on a
CPU, and a swapped block's weights are copied in from host memory for each forward there too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from contract.parameters import QUANTIZATIONS
from tests.training.test_engine import Recorder, make_spec
from tests.training.test_training_integration import assert_lora_changes_output
from training.engine import EngineError, train
from training.engine.memory import BlockSwap, full_recompute, quantize_base_weights, quantized_bytes, repeated_blocks

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass

CPU = torch.device("cpu")


def stack() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))


# (format, largest share of the fp32 bytes, largest relative error through two layers): 4 bits per
# weight round about four times coarser than 8.
@pytest.mark.parametrize(("kind", "most", "error"), [("fp8", 0.27, 0.05), ("int8", 0.27, 0.05), ("nf4", 0.16, 0.2)])
def test_a_quantized_stack_is_smaller_and_computes_and_backpropagates_what_it_did(
    kind: str, most: float, error: float
) -> None:
    plain = stack()
    quantized = stack()
    assert quantize_base_weights(quantized, kind) == 2
    # Against the fp32 original: a byte per weight (fp8, int8) or about half of one (nf4), plus scales.
    weights = [plain[0].weight, plain[2].weight]
    full = sum(w.numel() * w.element_size() for w in weights)
    stored = quantized_bytes(quantized) - quantized[0].bias.nbytes - quantized[2].bias.nbytes
    assert stored <= most * full

    x = torch.randn(8, 256, requires_grad=True)
    expected = plain(x)
    got = quantized(x)
    assert (got - expected).norm() / expected.norm() < error
    # The input's gradient goes through the quantized weights (a LoRA below them needs it).
    (grad_expected,) = torch.autograd.grad(expected.sum(), x)
    (grad_got,) = torch.autograd.grad(got.sum(), x)
    assert (grad_got - grad_expected).norm() / grad_expected.norm() < error


def test_narrow_linears_stay_unquantized_and_a_model_without_any_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.Linear(128, 8))
    assert quantize_base_weights(model, "int8") == 1
    assert type(model[1].weight) is torch.nn.Parameter  # too narrow to be worth it
    with pytest.raises(EngineError, match="no Linear layer large enough"):
        quantize_base_weights(torch.nn.Sequential(torch.nn.Linear(8, 8)), "nf4")
    with pytest.raises(EngineError, match="quantize_base 'int3' is unknown"):
        quantize_base_weights(model, "int3")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "kind"),
    # Every kind on FLUX; on HiDream, whose routed experts are quantized too, the smallest.
    [*(("flux", kind) for kind in QUANTIZATIONS), ("hidream", "nf4")],
)
def test_a_lora_trained_on_a_quantized_base_learns_what_the_full_precision_one_does(
    family: str, kind: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    base = tiny_models[family]
    plain = train(make_spec(base, tmp_path / "plain", steps=10), Recorder())
    quantized = train(make_spec(base, tmp_path / kind, quantize_base=kind, steps=10), Recorder())
    a, b = load_file(plain.weights_path), load_file(quantized.weights_path)
    assert a.keys() == b.keys()
    # The adapters moved the same way: what they learned differs only by the base weights' rounding
    # (cosine 0.99 for fp8, 0.9996 int8, 0.95 nf4 when this was written; a wrong gradient through the
    # quantized weights would point elsewhere).
    full = torch.cat([a[key].flatten() for key in a if "lora_B" in key])
    rounded = torch.cat([b[key].flatten() for key in a if "lora_B" in key])
    assert full.norm() > 0
    assert torch.nn.functional.cosine_similarity(full, rounded, dim=0) > 0.9
    assert_lora_changes_output(base, quantized.weights_path)  # and it loads on the plain, unquantized base


class Blocks(torch.nn.Module):
    """Four frozen residual blocks behind gradient checkpointing, as diffusers' transformers run them,
    between two trained layers (the gradient of the first one goes back through every block)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Linear(32, 32)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32)) for _ in range(4)
        )
        self.head = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return self.head(x)


def trained_ends(model: Blocks) -> Blocks:
    model.requires_grad_(False)
    model.stem.requires_grad_(True)
    model.head.requires_grad_(True)
    return model


def gradients(model: Blocks) -> torch.Tensor:
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    with full_recompute():
        loss = model(x).square().mean()
    loss.backward()
    assert model.stem.weight.grad is not None
    return model.stem.weight.grad


def test_swapped_blocks_hold_one_block_at_a_time_and_give_the_same_gradients() -> None:
    reference = trained_ends(Blocks())
    expected = gradients(reference)

    model = trained_ends(Blocks())
    swap = BlockSwap(list(model.blocks), CPU)
    per_block = 4  # two weights and two biases
    got = gradients(model)
    assert torch.equal(got, expected)
    # None is left after the step.
    assert swap.peak == per_block  # one block's copies alive at a time, in the forward and the backward
    assert swap.live == 0
    # Between steps the blocks hold their host weights.
    assert all(
        p.data_ptr() == h.data_ptr() for p, h in zip(model.blocks.parameters(), swap.host_tensors(), strict=True)
    )


def test_without_checkpointing_every_swapped_block_would_stay_on_the_device() -> None:
    """Why swap_blocks turns gradient checkpointing on: autograd keeps each block's weights for the
    backward pass, so without recomputation all the copies are alive at the peak."""

    class Plain(Blocks):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            for block in self.blocks:
                x = x + block(x)
            return self.head(x)

    model = trained_ends(Plain())
    swap = BlockSwap(list(model.blocks), CPU)
    gradients(model)
    assert swap.peak >= 4 * 2  # both weights of all four blocks at once (biases are not needed backward)


def test_a_recomputation_stopped_early_would_leave_every_block_on_the_device() -> None:
    """Why the trainer runs swapped steps under `full_recompute`: torch's checkpointing stops each
    block's recomputation once the tensors it needs are back, before the hook that returns the
    weights to the host, so every block's copy would stay."""
    model = trained_ends(Blocks())
    swap = BlockSwap(list(model.blocks), CPU)
    model(torch.randn(2, 32)).square().mean().backward()
    assert swap.live == 4 * 4


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux", "qwenimage", "hidream"])
def test_block_swapping_trains_the_same_lora_bit_for_bit(
    family: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    base = tiny_models[family]
    plain = train(make_spec(base, tmp_path / "plain", steps=4, gradient_checkpointing=True), Recorder())
    recorder = Recorder()
    swapped = train(make_spec(base, tmp_path / "swapped", steps=4, swap_blocks=2, sample_every=4,
                              sample_prompts=["zxq, a red square"], sample_steps=2), recorder)  # fmt: skip
    a, b = load_file(plain.weights_path), load_file(swapped.weights_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert any("2 blocks swapped from host memory" in line for line in recorder.logs)
    assert len(swapped.samples) == 1  # sampling during training runs with the blocks swapped


@pytest.mark.slow
def test_block_swapping_on_a_quantized_base_trains_what_the_quantized_base_does(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    base = tiny_models["flux"]
    alone = train(
        make_spec(base, tmp_path / "nf4", steps=4, quantize_base="nf4", gradient_checkpointing=True), Recorder()
    )
    both = train(make_spec(base, tmp_path / "both", steps=4, quantize_base="nf4", swap_blocks=2), Recorder())
    a, b = load_file(alone.weights_path), load_file(both.weights_path)
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("family", ["flux", "flux2-klein", "qwenimage", "hidream"])
def test_the_blocks_a_family_swaps_are_its_double_and_single_blocks(family: str, tiny_models: dict[str, Path]) -> None:
    from training.engine.families import family_class

    model = family_class(family)(str(tiny_models[family]), CPU, torch.float32)
    denoiser = model.load_denoiser()
    config = denoiser.config  # type: ignore[union-attr]  # diffusers' ModelMixin config
    expected = int(config["num_layers"]) + int(config.get("num_single_layers", 0))
    blocks = repeated_blocks(denoiser, model.block_prefixes)
    assert len(blocks) == expected > 0
    assert len({id(block) for block in blocks}) == expected


@pytest.mark.parametrize(
    ("family", "options", "message"),
    [
        ("sd15", {"swap_blocks": 1}, "swap_blocks is for transformer models"),
        ("flux", {"swap_blocks": 99}, "swap_blocks 99: this model has only"),
        ("flux", {"swap_blocks": 1, "training_type": "FULL"}, "swap_blocks needs training_type LORA"),
        ("flux", {"swap_blocks": 1, "compile": "blocks"}, "swap_blocks and compile do not combine"),
        ("flux", {"quantize_base": "nf4", "lora_type": "dora"}, "quantize_base does not combine with lora_type dora"),
    ],
)
def test_memory_levers_that_cannot_apply_are_refused_by_name(
    family: str, options: dict, message: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(EngineError, match=message):
        train(make_spec(tiny_models[family], tmp_path, steps=2, **options), Recorder())
    assert not list((tmp_path / "out").glob("*.safetensors"))
