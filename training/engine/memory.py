"""Memory levers for models bigger than the card: quantized frozen base weights and block swapping.

Quantization goes through torchao (PyTorch's own quantization library): its weight tensor subclasses
keep each Linear a `torch.nn.Linear`, so PEFT still wraps it with adapters, and its kernels carry the
backward pass through the frozen weight to the adapters below it.

- `fp8`: float8 (e4m3) weights with a scale per output row, half of bf16 (`Float8WeightOnlyConfig`);
- `int8`: int8 weights with a scale per output row, half of bf16 (`Int8WeightOnlyConfig`);
- `nf4`: QLoRA's 4-bit NormalFloat with double-quantized block scales, about a quarter of bf16
  (`NF4Tensor`, the format torchtune's QLoRA trains on; its `F.linear` dequantizes per call).

All three run on a CPU too, which is how the tests exercise them.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

from contract.parameters import QUANTIZATIONS
from training.engine.errors import EngineError

# Linears narrower than this on either side are left in full precision: too small to matter, and the
# 4-bit format needs whole 64-value blocks.
MIN_FEATURES = 16
NF4_BLOCK = 64  # values per absmax block (QLoRA's choice)
NF4_SCALER_BLOCK = 256  # block scales per double-quantization group (QLoRA's choice)

__all__ = ["QUANTIZATIONS", "BlockSwap", "place_denoiser", "quantize_base_weights", "repeated_blocks"]


def _quiet_torchao() -> None:
    # PEFT warns that an adapter on a torchao weight cannot be merged into it: the engine never merges
    # (the adapters are exported on their own and the base is loaded afresh for generation).
    warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated without", category=UserWarning)


def _eligible(module: torch.nn.Module) -> bool:
    """A plain Linear, wide enough, whose weight is not quantized yet (a quantized weight is a tensor
    subclass, a plain one exactly `Parameter`)."""
    return (
        type(module) is torch.nn.Linear
        and type(module.weight) is torch.nn.Parameter
        and min(module.in_features, module.out_features) >= MIN_FEATURES
    )


def _nf4_blocks(weight: torch.Tensor) -> tuple[int, int] | None:
    """(block size, scaler block size) for this weight, or None when it has no whole number of them.
    Real models' linears take QLoRA's 64 / 256; narrower layers (the tiny test models) take smaller
    scaler groups rather than staying unquantized."""
    if weight.numel() % NF4_BLOCK:
        return None
    blocks = weight.numel() // NF4_BLOCK
    for scaler in (NF4_SCALER_BLOCK, 128, 64, 32, 16, 8):
        if blocks % scaler == 0:
            return NF4_BLOCK, scaler
    return None


def quantize_base_weights(denoiser: torch.nn.Module, kind: str) -> int:
    """Store the frozen Linear weights of `denoiser` in `kind` (one of QUANTIZATIONS), in place, where
    they are, before the adapters are added. Returns how many Linears were quantized."""
    if kind not in QUANTIZATIONS:
        raise EngineError(f"quantize_base {kind!r} is unknown; choose {', '.join(QUANTIZATIONS)}")
    count = _quantize(denoiser, kind)
    if count == 0:
        raise _nothing_to_quantize(kind)
    return count


def _nothing_to_quantize(kind: str) -> EngineError:
    return EngineError(f"quantize_base {kind}: the base model has no Linear layer large enough to quantize")


def _quantize(denoiser: torch.nn.Module, kind: str) -> int:
    _quiet_torchao()
    if kind == "nf4":
        from torchao.quantization import to_nf4

        count = 0
        for module in denoiser.modules():
            if not _eligible(module):
                continue
            assert isinstance(module, torch.nn.Linear)
            blocks = _nf4_blocks(module.weight)
            if blocks is None:
                continue
            weight = to_nf4(module.weight.detach().contiguous(), *blocks)
            module.weight = torch.nn.Parameter(weight, requires_grad=False)
            count += 1
    else:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        count = sum(1 for module in denoiser.modules() if _eligible(module))
        config = Float8WeightOnlyConfig() if kind == "fp8" else Int8WeightOnlyConfig()
        if count:
            quantize_(denoiser, config, filter_fn=lambda module, _name: _eligible(module))
    return count


def repeated_blocks(denoiser: torch.nn.Module, prefixes: tuple[str, ...]) -> list[torch.nn.Module]:
    """The denoiser's repeated blocks, in the order of the family's `block_prefixes`."""
    blocks: list[torch.nn.Module] = []
    for prefix in prefixes:
        container = getattr(denoiser, prefix, None)
        if isinstance(container, torch.nn.ModuleList):
            blocks.extend(container)
    return blocks


def place_denoiser(
    denoiser: torch.nn.Module,
    device: torch.device,
    *,
    blocks: list[torch.nn.Module],
    quantize: str | None,
    hosted: int,
) -> list[torch.nn.Module]:
    """Bring a denoiser loaded in host memory onto `device`, one block at a time, quantizing each block
    there (`quantize`) and leaving the last `hosted` blocks in host memory for a `BlockSwap`. The device
    never holds more than the kept part of the model plus one block in the checkpoint's precision,
    which is what lets a 20 B model be quantized on a 24 GB card. Returns the blocks left on the host."""
    if hosted > len(blocks):
        raise EngineError(f"swap_blocks {hosted}: this model has only {len(blocks)} blocks to swap")
    kept_on_host = blocks[len(blocks) - hosted :] if hosted else []
    host = torch.device("cpu")
    count = 0
    for block in blocks:
        block.to(device)
        if quantize:
            count += _quantize(block, quantize)
        if any(block is hosted_block for hosted_block in kept_on_host):
            block.to(host)
    held = {id(module) for block in kept_on_host for module in block.modules()}
    for module in denoiser.modules():
        if id(module) in held:
            continue
        for name, tensor in list(module.named_parameters(recurse=False)):
            if tensor.device != device:
                module._parameters[name] = torch.nn.Parameter(tensor.to(device), requires_grad=tensor.requires_grad)
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.device != device:
                module._buffers[name] = buffer.to(device)
    if quantize:
        count += _quantize(denoiser, quantize)  # Linears outside the blocks (embedders, final layers)
        if count == 0:
            raise _nothing_to_quantize(quantize)
    return kept_on_host


def quantized_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's parameters and buffers hold, counting torchao's quantized weights by their
    inner tensors (the outer tensor of a subclass reports its logical dtype, not its storage)."""
    storages = {
        storage.data_ptr(): storage.nbytes()
        for tensor in (*module.parameters(), *module.buffers())
        for storage in _storages(tensor)
    }
    return sum(storages.values())


def _storages(tensor: torch.Tensor) -> list[torch.UntypedStorage]:
    """The storages holding a tensor's data: its own, or for a quantized weight (a tensor subclass)
    those of its inner tensors."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return [tensor.untyped_storage()]
    names, _ = flatten()
    return [storage for name in names for storage in _storages(getattr(tensor, name))]


class BlockSwap:
    """Block swapping: the frozen weights of `blocks` live in (pinned) host
    memory and are copied to the device just before their block runs, so the device holds about one
    block's weights at a time instead of all of them. Trained adapters stay on the device throughout.

    Written here rather than taken from diffusers' group offloading or accelerate's hooks, because both
    are built for inference: diffusers swaps `param.data` back to the host after each forward, which
    the backward pass then finds on the wrong device (autograd saved the same tensor); accelerate's
    hooks re-create every parameter of a module, trainable adapters included, so the optimizer would
    lose them. Here each forward gets a fresh device copy of the frozen weights, put in the module in
    place of the host one: autograd keeps that copy exactly as long as the backward pass needs it.
    That is only while the block's own backward runs when gradient checkpointing is on, which is
    therefore required (without it every copy would stay alive until the backward, saving nothing).
    """

    def __init__(self, blocks: list[torch.nn.Module], device: torch.device) -> None:
        self.device = device
        self.blocks = blocks
        self.live = 0  # device copies (storages) currently alive: what the tests and the benchmark watch
        self.peak = 0
        self._host: list[list[tuple[torch.nn.Module, str, torch.Tensor, bool]]] = []
        for block in self.blocks:
            entries = []
            for module in block.modules():
                for name, tensor in list(module.named_parameters(recurse=False)):
                    if not tensor.requires_grad:
                        entries.append((module, name, self._to_host(tensor), True))
                for name, buffer in list(module.named_buffers(recurse=False)):
                    entries.append((module, name, self._to_host(buffer), False))
            for module, name, host, is_parameter in entries:
                self._put(module, name, host, is_parameter)
            self._host.append(entries)
            index = len(self._host) - 1
            block.register_forward_pre_hook(self._loader(index))
            block.register_forward_hook(self._unloader(index))

    def _to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        host = tensor.detach().to("cpu")
        if self.device.type == "cuda":
            # Pinned, the copy to the device runs without staging; a quantized format that cannot be
            # pinned is copied through a staging buffer, slower only.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                host = host.pin_memory()
        return host

    @staticmethod
    def _put(module: torch.nn.Module, name: str, tensor: torch.Tensor, is_parameter: bool) -> torch.Tensor:
        """Put `tensor` in the module (as a frozen Parameter when it replaces one); returns the object put."""
        if is_parameter:
            tensor = torch.nn.Parameter(tensor, requires_grad=False)
            module._parameters[name] = tensor
        else:
            module._buffers[name] = tensor
        return tensor

    def _loader(self, index: int) -> Callable[..., None]:
        def load(_module: torch.nn.Module, _args: Any) -> None:
            for module, name, host, is_parameter in self._host[index]:
                # A new tensor each time (never the host one's `.data` replaced): see the class docstring.
                copy = host.to(self.device, non_blocking=True)
                if copy is host:  # a CPU run: still a copy of its own, so the mechanism is the same
                    copy = host.clone()
                self._track(self._put(module, name, copy, is_parameter))

        return load

    def _unloader(self, index: int) -> Callable[..., None]:
        def unload(_module: torch.nn.Module, _args: Any, _output: Any) -> None:
            for module, name, host, is_parameter in self._host[index]:
                self._put(module, name, host, is_parameter)

        return unload

    def _track(self, tensor: torch.Tensor) -> None:
        """Count the copy's memory as live until its storage is freed: autograd may keep a view of it
        (a transposed weight) after the module and the tensor object itself have let go."""
        for storage in _storages(tensor):
            self.live += 1
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._released)

    def _released(self) -> None:
        self.live -= 1

    def host_tensors(self) -> Iterator[torch.Tensor]:
        for entries in self._host:
            for _module, _name, host, _is_parameter in entries:
                yield host


@contextlib.contextmanager
def full_recompute() -> Iterator[None]:
    """Checkpointed blocks recompute their whole forward in the backward pass (not stopping as soon as
    the saved tensors it needs are back), so a swapped block's forward hook always runs and returns
    its weights to the host."""
    from torch.utils.checkpoint import set_checkpoint_early_stop

    with set_checkpoint_early_stop(False):
        yield
