"""Measuring what a training changed: where a model's generations land relative to its training data.

The measure is taken in the denoiser's latent space, where the tiny test models' random VAE decoders
cannot blur it: the per-channel mean of the latents (the image's overall colour and tone). A LoRA that
learned its data moves the generations' means towards the data's; `shift_towards` says by how much."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from training.engine.generate import load_pipeline, pick_device


@dataclass(frozen=True)
class Shift:
    without: float  # mean distance of the base model's generations to the data
    with_adapter: float  # the same with the trained weights

    @property
    def closer(self) -> float:
        """The share of the distance the training removed (0: none, 1: all of it)."""
        return 1.0 - self.with_adapter / self.without if self.without else 0.0


def data_features(base_model: str, paths: list[Path], *, size: int) -> torch.Tensor:
    """(N, C): each image's per-channel latent mean, in the denoiser's latent space (encoded and scaled
    as the trainer encodes and scales its data)."""
    from training.engine.base_models import resolve_family
    from training.engine.families import family_class

    family = family_class(resolve_family(base_model))(base_model, pick_device("cpu"), torch.float32)
    family.load_encoders()
    features = []
    for path in paths:
        with Image.open(path) as opened:
            array = np.asarray(opened.convert("RGB").resize((size, size)), dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1)[None]
        latents = family.scale_latents(family.encode_pixels(pixels)[0])
        features.append(latents.mean(dim=(2, 3))[0])
    family.release_encoders()
    return torch.stack(features)


def generated_features(
    base_model: str,
    *,
    prompt: str,
    seeds: list[int],
    size: int,
    adapter: Path | None = None,
    image: Image.Image | list[Image.Image] | None = None,
    steps: int = 10,
) -> torch.Tensor:
    """(len(seeds), C): the per-channel latent mean of an image generated from each seed, in the
    denoiser's latent space (as `data_features`)."""
    generator = FeatureGenerator(base_model, adapter=adapter)
    return generator.features(prompt=prompt, seeds=seeds, size=size, image=image, steps=steps)


class FeatureGenerator:
    """A base model's pipeline (with `adapter` loaded, if given) loaded once, generating latent features for as
    many prompts as asked."""

    def __init__(self, base_model: str, *, adapter: Path | None = None) -> None:
        from training.engine.base_models import resolve_family
        from training.engine.export import load_weights_file
        from training.engine.families import family_class

        device = pick_device("cpu")
        self.family = family_class(resolve_family(base_model))(base_model, device, torch.float32)
        self.pipeline = load_pipeline(base_model, device=device)
        if adapter is not None:
            load_weights_file(self.pipeline, adapter)

    def features(
        self,
        *,
        prompt: str,
        seeds: list[int],
        size: int,
        image: Image.Image | list[Image.Image] | None = None,
        steps: int = 10,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        features = []
        for seed in seeds:
            arguments: dict[str, Any] = {
                "prompt": prompt,
                "num_inference_steps": steps,
                "width": size,
                "height": size,
                "generator": torch.Generator().manual_seed(seed),
                "output_type": "latent",
            }
            if guidance_scale is not None:
                arguments["guidance_scale"] = guidance_scale
            # As generate.run_pipeline: sizes, an edit's source.
            self.family.prepare_generation(self.pipeline, arguments, image)
            with torch.no_grad(), self.family.generation_scope(self.pipeline, arguments):
                latents = self.pipeline(**arguments).images
            latents = self.family.latents_from_pipeline(latents, self.pipeline, size)
            features.append(latents.mean(dim=(2, 3))[0].float())
        return torch.stack(features)


def distance(features: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean distance of each feature row to the reference data's mean feature."""
    return float((features - reference.mean(dim=0)).norm(dim=1).mean())


def shift_towards(
    base_model: str,
    data: list[Path],
    *,
    adapter: Path,
    prompt: str,
    seeds: list[int],
    size: int,
    image: Image.Image | list[Image.Image] | None = None,
) -> Shift:
    """How much closer to `data` the generations get with the trained `adapter` than without it."""
    reference = data_features(base_model, data, size=size)
    common: dict[str, Any] = {"prompt": prompt, "seeds": seeds, "size": size, "image": image}
    return Shift(
        without=distance(generated_features(base_model, **common), reference),
        with_adapter=distance(generated_features(base_model, adapter=adapter, **common), reference),
    )


@dataclass(frozen=True)
class TriggerPull:
    """Where the generations of a prompt with the trigger word land relative to those of the same prompt
    without it, on the axis from the `other` data (0) to the trigger's `concept` data (1), averaged over
    seeds: 1 means the trigger word alone moves a generation all the way from one concept to the other."""

    base: float  # the base model's (a random model's text path already moves generations a little)
    trained: float  # with the trained weights

    @property
    def learned(self) -> float:
        """What the training added: how far the trigger word now moves generations toward its concept."""
        return self.trained - self.base


def trigger_pull(
    base_model: str,
    concept: list[Path],
    other: list[Path],
    *,
    adapter: Path,
    trigger_prompt: str,
    plain_prompt: str,
    seeds: list[int],
    size: int,
) -> TriggerPull:
    """How much the trigger word matters after a training on `concept` captioned with it and `other`
    captioned without it: the same seeds generated with both prompts, with and without `adapter`."""
    target = data_features(base_model, concept, size=size).mean(dim=0)
    origin = data_features(base_model, other, size=size).mean(dim=0)
    axis = target - origin

    def pull(weights: Path | None) -> float:
        positions = [
            (generated_features(base_model, prompt=prompt, seeds=seeds, size=size, adapter=weights) - origin) @ axis
            for prompt in (trigger_prompt, plain_prompt)
        ]
        return float((positions[0] - positions[1]).mean() / axis.dot(axis))

    return TriggerPull(base=pull(None), trained=pull(adapter))


# Noise levels (0 clean, 1 pure noise) at which `denoising_loss` measures, as the trainer's validation.
LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def denoising_loss(
    base_model: str,
    images: list[Path],
    caption: str,
    *,
    size: int,
    weights: Path | None = None,
    sources: list[Path] | None = None,
    seed: int = 0,
    levels: tuple[float, ...] = LEVELS,
) -> float:
    """The model's training loss on `images` captioned `caption`, at fixed noise levels and fixed noise:
    how well it knows these images under this caption (lower is better). With `weights`, the trained
    result is applied first; `sources` are an edit model's input images, one per image. Near pure noise
    (`levels` close to 1) the image itself is hidden and the caption must say what it is."""
    from training.engine.base_models import resolve_family
    from training.engine.export import load_weights_file
    from training.engine.families import family_class
    from training.engine.families.base import NoiseSettings

    device = pick_device("cpu")
    family = family_class(resolve_family(base_model))(base_model, device, torch.float32)
    pipeline = load_pipeline(base_model, device=device)
    if weights is not None:
        load_weights_file(pipeline, weights)
    denoiser = getattr(pipeline, family.denoiser_key).eval()
    family.load_encoders()
    conditioning = family.encode_prompts([caption])

    def latents_of(path: Path) -> torch.Tensor:
        with Image.open(path) as opened:
            array = np.asarray(opened.convert("RGB").resize((size, size)), dtype=np.float32) / 127.5 - 1.0
        mean, _ = family.encode_pixels(torch.from_numpy(array).permute(2, 0, 1)[None])
        return family.scale_latents(mean).to(device)

    settings = NoiseSettings()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for index, path in enumerate(images):
        latents = latents_of(path)
        source = [latents_of(sources[index])] if sources else None
        for level in levels:
            noise = torch.randn(latents.shape, generator=generator)
            noised = family.add_noise(latents, generator, settings, levels=torch.tensor([level]), noise=noise)
            prediction = family.predict(denoiser, noised, conditioning, settings, source_latents=source)
            total += float(torch.nn.functional.mse_loss(prediction.float(), noised.target.float()))
            count += 1
    family.release_encoders()
    return total / max(1, count)


def caption_match(
    base_model: str,
    items: list[tuple[Path, str]],
    *,
    adapter: Path,
    seeds: list[int],
    size: int,
    guidance_scale: float = 1.0,
) -> Shift:
    """How much nearer each image the generations of its own caption land with the trained `adapter` than
    without it (the mean over the images of the distance between the generations' and the image's latent
    means): a model that learned what its captions describe draws each caption's colours and tone. Unlike
    `shift_towards`, it suits a varied dataset, whose images have no single mean to move towards.

    It reads the caption-conditioned model itself: classifier-free guidance off (`guidance_scale` 1.0) by
    default. Guidance extrapolates away from the unconditional prediction, which the LoRA moves too; on the
    tiny demo model SD's 7.5 amplified that into latents far from every image for some trainings (the demo's own
    seed: 3.866 -> 4.563 with guidance 7.5, 3.808 -> 2.506 without)."""
    references = data_features(base_model, [path for path, _caption in items], size=size)
    distances = []
    for generator in (FeatureGenerator(base_model), FeatureGenerator(base_model, adapter=adapter)):
        per_image = [
            distance(
                generator.features(prompt=caption, seeds=seeds, size=size, guidance_scale=guidance_scale),
                references[index : index + 1],
            )
            for index, (_path, caption) in enumerate(items)
        ]
        distances.append(sum(per_image) / len(per_image))
    return Shift(without=distances[0], with_adapter=distances[1])
