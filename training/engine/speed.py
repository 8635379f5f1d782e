"""Speed and memory options of the training loop, each one switchable so that `bench/` can measure it
on and off: compiled denoiser, channels-last convolutions, the attention kernel, fp8 base weights.

`None` in a spec means "what pays on this device": see `resolve_speed`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812

from training.engine.errors import EngineError

COMPILE_MODES = ("off", "blocks", "full")
ATTENTION_KERNELS = ("sdpa", "eager")
QUANTIZATIONS = ("fp8",)
PRECISIONS = ("bf16", "no")
# torch.compile costs tens of seconds up front (minutes for FLUX.1): below this many steps it does not pay back.
COMPILE_MIN_STEPS = 300


@dataclass(frozen=True)
class SpeedOptions:
    compile: str
    channels_last: bool
    attention: str
    quantize_base: str | None
    mixed_precision: str = "no"  # "bf16": the denoiser's matmuls and convolutions run in bfloat16


def resolve_speed(
    *,
    compile_mode: str | None,
    channels_last: bool | None,
    attention: str,
    quantize_base: str | None,
    device: torch.device,
    mixed_precision: str | None = None,
    steps: int,
    is_unet: bool,
    training_type: str,
) -> SpeedOptions:
    """Check the options and fill the automatic ones for this device and run length."""
    if compile_mode is not None and compile_mode not in COMPILE_MODES:
        raise EngineError(f"compile {compile_mode!r} is unknown; choose {', '.join(COMPILE_MODES)}")
    if attention not in ATTENTION_KERNELS:
        raise EngineError(f"attention {attention!r} is unknown; choose {' or '.join(ATTENTION_KERNELS)}")
    if quantize_base is not None and quantize_base not in QUANTIZATIONS:
        raise EngineError(f"quantize_base {quantize_base!r} is unknown; choose {', '.join(QUANTIZATIONS)}")
    if mixed_precision is not None and mixed_precision not in PRECISIONS:
        raise EngineError(f"mixed_precision {mixed_precision!r} is unknown; choose {' or '.join(PRECISIONS)}")
    if quantize_base and training_type != "LORA":
        raise EngineError("quantize_base needs training_type LORA: a full fine-tune trains the base weights themselves")
    cuda = device.type == "cuda"
    if compile_mode is None:
        # Regional compilation of the repeated blocks: most of the gain for a fraction of the compile
        # time. On a CPU the compiler emits C++, so it needs a C++ compiler on the machine.
        can_compile = cuda or shutil.which("c++") is not None or shutil.which("g++") is not None
        compile_mode = "blocks" if can_compile and steps >= COMPILE_MIN_STEPS else "off"
    if channels_last is None:
        channels_last = cuda and is_unet
    return SpeedOptions(
        compile=compile_mode,
        channels_last=channels_last and is_unet,
        attention=attention,
        quantize_base=quantize_base,
        mixed_precision=mixed_precision or ("bf16" if cuda else "no"),
    )


class Float8Linear(torch.nn.Linear):
    """A frozen Linear whose weight is stored in float8 (e4m3) with one scale per output row: half the
    memory of bf16. It is widened to the input's dtype for each matmul. Still a `torch.nn.Linear`, so
    PEFT wraps it with LoRA adapters like any other."""

    def __init__(self, source: torch.nn.Linear) -> None:
        torch.nn.Module.__init__(self)
        self.in_features = source.in_features
        self.out_features = source.out_features
        weight = source.weight.detach()
        scale = weight.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max
        quantized = (weight.float() / scale).to(torch.float8_e4m3fn)
        self.weight = torch.nn.Parameter(quantized, requires_grad=False)
        self.register_buffer("weight_scale", scale.to(weight.dtype), persistent=False)
        self.bias = None if source.bias is None else torch.nn.Parameter(source.bias.detach(), requires_grad=False)
        self.compute_dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Float8Matmul.apply(x, self.weight, self.weight_scale, self.bias)


class _Float8Matmul(torch.autograd.Function):
    """y = x Wᵀ + b with W widened from float8 on the fly. Only the float8 weight is kept for the
    backward pass (which widens it again): saving the widened copy would cost the memory back."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        dtype = dtype or x.dtype
        ctx.save_for_backward(weight, scale)
        ctx.input_dtype = x.dtype  # type: ignore[attr-defined]  # torch's FunctionCtx declares no room for a Function's own state
        widened = weight.to(dtype) * scale.to(dtype)
        return F.linear(x.to(dtype), widened, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, scale = ctx.saved_tensors  # type: ignore[attr-defined]
        widened = weight.to(grad.dtype) * scale.to(grad.dtype)
        return (grad @ widened).to(ctx.input_dtype), None, None, None  # type: ignore[attr-defined]


def quantize_linears(module: torch.nn.Module, *, min_features: int = 16) -> int:
    """Swap every Linear of `module` (those big enough to matter) for a Float8Linear. Returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.Linear and min(child.in_features, child.out_features) >= min_features:
            setattr(module, name, Float8Linear(child))
            count += 1
        else:
            count += quantize_linears(child, min_features=min_features)
    return count


def apply_before_adapter(denoiser: torch.nn.Module, options: SpeedOptions) -> None:
    """Options that change the base model itself: run before the LoRA adapters are added."""
    if options.quantize_base == "fp8" and quantize_linears(denoiser) == 0:
        raise EngineError("quantize_base fp8: the base model has no Linear layer large enough to quantize")
    if options.attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        if not hasattr(denoiser, "set_attn_processor") or not hasattr(denoiser, "attn_processors"):
            raise EngineError("attention eager is available for UNet models only")
        try:
            denoiser.set_attn_processor(AttnProcessor())  # type: ignore[operator]  # a diffusers method (checked above), behind torch's __getattr__
        except ValueError as exc:
            raise EngineError(f"attention eager is not available for this model ({exc})") from exc
    if options.channels_last:
        denoiser.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit Module.to(memory_format=)


def apply_after_adapter(denoiser: torch.nn.Module, options: SpeedOptions) -> None:
    """Compile last, so that the compiled graphs include the adapters."""
    if options.compile != "off":
        import torch._dynamo

        # A graph the compiler cannot handle runs uncompiled instead of failing the training.
        torch._dynamo.config.suppress_errors = True
        # Every block shares one forward: one graph per (block, bucket shape), more than the default 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)
    # One graph per bucket shape (static shapes): a run has a handful of buckets, and dynamic-shape
    # graphs are both slower and, for some UNet configurations, rejected by the compiler.
    if options.compile == "full":
        denoiser.compile(dynamic=False)
    elif options.compile == "blocks":
        if getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(dynamic=False)  # type: ignore[operator]
        else:
            denoiser.compile(dynamic=False)
