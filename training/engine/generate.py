"""Generation with a base model and, optionally, a LoRA trained here. The API's jobs and the samples
taken during training both go through `load_pipeline` and `run_pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from training.engine.export import load_weights_file
from training.engine.families import family_class, family_of_pipeline


def pick_device(requested: str | None) -> Any:
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(base_model: str, *, device: Any, components: dict[str, Any] | None = None) -> Any:
    """The base model's own pipeline class (read from its folder), with any components given replaced
    (and left on the device they are on)."""
    import torch
    from diffusers import DiffusionPipeline

    from training.engine import quiet_libraries
    from training.engine.base_models import resolve_family

    quiet_libraries()
    family = family_class(resolve_family(base_model))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # Optional components generation does without (a prompt enhancer) are not loaded.
    given = {
        **{name: None for name in family.components_not_loaded},
        **family.pipeline_components(base_model),
        **(components or {}),
    }
    extra: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipeline = DiffusionPipeline.from_pretrained(base_model, dtype=dtype, **extra, **given)
    except TypeError:  # pipelines without a safety checker refuse those arguments
        pipeline = DiffusionPipeline.from_pretrained(base_model, dtype=dtype, **given)
    pipeline.set_progress_bar_config(disable=True)
    if not components:
        return pipeline.to(device)
    # Components given are the trainer's live modules, already placed: moving one would also bring a
    # swapped block's host weights onto the device (memory.BlockSwap).
    for name, component in pipeline.components.items():
        if isinstance(component, torch.nn.Module) and name not in components:
            component.to(device)
    return pipeline


def run_pipeline(
    pipeline: Any,
    *,
    prompt: str,
    width: int | None = None,
    height: int | None = None,
    steps: int = 25,
    seed: int = 0,
    num_images: int = 1,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    image: Image.Image | list[Image.Image] | None = None,
    bypass_guidance_embedding: bool = False,
) -> list[Image.Image]:
    import torch

    denoiser = getattr(pipeline, "unet", None) or pipeline.transformer
    sample_size = denoiser.config.sample_size if hasattr(denoiser.config, "sample_size") else None
    default = (sample_size or 64) * pipeline.vae_scale_factor if getattr(pipeline, "unet", None) else 1024
    if not getattr(pipeline, "unet", None) and pipeline.vae_scale_factor < 8:
        default = 64  # the tiny test models
    arguments: dict[str, Any] = {
        "prompt": prompt,
        "width": width or default,
        "height": height or default,
        "num_inference_steps": steps,
        "num_images_per_prompt": num_images,
        "generator": torch.Generator(device="cpu").manual_seed(seed),
    }
    if guidance_scale is not None:
        arguments["guidance_scale"] = guidance_scale
    if negative_prompt:
        arguments["negative_prompt"] = negative_prompt
    family = family_of_pipeline(pipeline)
    family.prepare_generation(pipeline, arguments, image)  # an edit model's source, a pipeline's own size rule
    with (
        torch.no_grad(),
        family.guidance_embedding_bypassed(denoiser, enabled=bypass_guidance_embedding),
        family.generation_scope(pipeline, arguments),
    ):
        return list(pipeline(**arguments).images)


def generate(
    *,
    base_model: str,
    prompt: str,
    lora_path: Path | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int = 25,
    seed: int = 0,
    num_images: int = 1,
    guidance_scale: float | None = None,
    negative_prompt: str | None = None,
    image: Image.Image | list[Image.Image] | None = None,
    device: str | None = None,
) -> list[Image.Image]:
    pipeline = load_pipeline(base_model, device=pick_device(device))
    if lora_path is not None:
        # LoRA/DoRA through diffusers; LoKr/LoHa (which diffusers cannot load) through PEFT, from the
        # config recorded in the file's metadata. Either layout (diffusers/PEFT or kohya/LyCORIS).
        load_weights_file(pipeline, Path(lora_path))
    return run_pipeline(
        pipeline,
        prompt=prompt,
        width=width,
        height=height,
        steps=steps,
        seed=seed,
        num_images=num_images,
        guidance_scale=guidance_scale,
        negative_prompt=negative_prompt,
        image=image,
    )
