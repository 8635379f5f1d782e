"""Speed and memory options of the training loop, each one switchable so that `bench/` can measure it
on and off: compiled denoiser, channels-last convolutions, the attention kernel, and the memory levers
(quantized base weights, block swapping: memory.py).

`None` in a spec means "what pays on this device": see `resolve_speed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contract.parameters import QUANTIZATIONS
from training.engine.errors import EngineError

COMPILE_MODES = ("off", "blocks", "full")
ATTENTION_KERNELS = ("sdpa", "eager")
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
    swap_blocks: int = 0  # blocks kept in host memory (memory.BlockSwap)
    # Compiled graphs fixed to each bucket's shapes; False where a block's own shapes change from step to
    # step (HiDream's experts take however many tokens the router sends them).
    static_shapes: bool = True


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
    swap_blocks: int = 0,
    static_shapes: bool = True,
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
    if swap_blocks:
        if training_type != "LORA":
            raise EngineError("swap_blocks needs training_type LORA: only frozen base weights are swapped")
        if is_unet:
            raise EngineError("swap_blocks is for transformer models; a UNet model fits without it")
        if compile_mode not in (None, "off"):
            raise EngineError(
                "swap_blocks and compile do not combine: a compiled block cannot have its weights swapped"
            )
        compile_mode = "off"
    cuda = device.type == "cuda"
    if compile_mode is None:
        # Regional compilation of the repeated blocks on a GPU: most of the gain for a fraction of the compile
        # time. Never automatic on a CPU: there the compiler builds C++ kernels for minutes and the compiled steps
        # are slower (bench/demo.py, the demo's recipe on 2 cores: 151 s compiling, then 0.237 s a step against
        # 0.132 uncompiled), so it never pays back.
        compile_mode = "blocks" if cuda and steps >= COMPILE_MIN_STEPS else "off"
    if channels_last is None:
        channels_last = cuda and is_unet
    return SpeedOptions(
        compile=compile_mode,
        channels_last=channels_last and is_unet,
        attention=attention,
        quantize_base=quantize_base,
        mixed_precision=mixed_precision or ("bf16" if cuda else "no"),
        swap_blocks=swap_blocks,
        static_shapes=static_shapes,
    )


def apply_before_adapter(denoiser: torch.nn.Module, options: SpeedOptions) -> None:
    """Options that change the base model itself: run before the LoRA adapters are added."""
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
    # graphs are both slower and, for some UNet configurations, rejected by the compiler. Where the shapes
    # inside a block change every step, static graphs would be recompiled every step (HiDream's tiny model:
    # 10.9 s a step against 0.02 uncompiled); the compiler's automatic dynamic shapes compile them twice.
    dynamic = False if options.static_shapes else None
    if options.compile == "full":
        denoiser.compile(dynamic=dynamic)
    elif options.compile == "blocks":
        if getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(dynamic=dynamic)  # type: ignore[operator]
        else:
            denoiser.compile(dynamic=dynamic)
