"""Each quality lever of the engine does what its name says: checked on the thing it changes (the
modules adapted, the order of the data, the noise, the loss, the exported weights), not only that a run
with it finishes."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from contract.families import family_facts
from training.engine import EngineError, SilentCallbacks, TrainingCancelled, TrainingSpec, train
from training.engine.checkpoints import list_checkpoints
from training.engine.data import EpochSampler, bucket_crop
from training.engine.export import read_metadata
from training.engine.families import family_class
from training.engine.families.base import NoiseSettings
from training.engine.generate import generate
from training.engine.spec import DatasetImage
from training.engine.testing import FAMILIES  # every family, each with a tiny model
from training.engine.testing.comfyui import comfyui_lora_names, unmapped_kohya_modules
from training.engine.testing.images import write_concept
from training.engine.trainer.cache import Cache
from training.engine.trainer.dataset import class_caption
from training.engine.trainer.step import elementwise_loss, reduce_loss

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass

CPU = torch.device("cpu")


def spec_for(base: Path, out: Path, images: list[DatasetImage], **overrides: Any) -> TrainingSpec:
    values: dict[str, Any] = {
        "base_model": str(base),
        "output_dir": out,
        "images": images,
        "trigger_word": "zxq",
        "rank": 4,
        "steps": 4,
        "learning_rate": 1e-3,
        "batch_size": 2,
        "optimizer": "adamw",
        "captioning_strategy": "description",
        "resolution": 32,
        "progress_interval_seconds": 0.0,
        "save_every": 100_000,
        "compile": "off",
    }
    values.update(overrides)
    return TrainingSpec(**values)


@pytest.fixture
def red(tmp_path: Path) -> list[DatasetImage]:
    return write_concept(tmp_path / "red", 6, colour=(200, 30, 30), caption="zxq, a disc", size=32)


class Recorder(SilentCallbacks):
    def __init__(self, cancel_after: int | None = None) -> None:
        self.logs: list[str] = []
        self.steps: list[int] = []
        self.smoothed: list[float] = []
        self.losses: list[float] = []
        self.snapshots: list[int] = []
        self.checkpoints: list[int] = []
        self.cancel_after = cancel_after

    def on_log(self, message: str) -> None:
        self.logs.append(message)

    def on_progress(self, progress: Any) -> None:
        self.steps.append(progress.step)
        self.losses.append(progress.loss)
        self.smoothed.append(progress.smoothed_loss)

    def on_snapshot(self, step: int, path: Path) -> None:
        self.snapshots.append(step)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.checkpoints.append(step)

    def should_cancel(self) -> bool:
        return self.cancel_after is not None and bool(self.steps) and self.steps[-1] >= self.cancel_after


# --- the tiny models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_models_see_captions_and_carry_signal_in_their_latents(
    family: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    base = tiny_models[family]
    for folder in ("tokenizer", "tokenizer_2", "tokenizer_3", "tokenizer_4"):
        if not (base / folder).is_dir():
            continue
        tokenizer = AutoTokenizer.from_pretrained(str(base / folder))  # loaded back from what was saved
        ids = [tuple(tokenizer(text).input_ids) for text in ("zxq a dog", "a photo of a dog", "red", "blue", "")]
        assert len(set(ids)) == len(ids), (folder, ids)
        tokenizer.save_pretrained(str(tmp_path / folder))
        again = AutoTokenizer.from_pretrained(str(tmp_path / folder))
        assert tuple(again("zxq a dog").input_ids) == ids[0]

    # Scaled latents of ordinary images have roughly unit spread, and two colours are far apart.
    engine_family = family_class(family)(str(base), CPU, torch.float32)
    engine_family.load_encoders()

    def latents(colour: tuple[int, int, int]) -> torch.Tensor:
        pixels = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 32, 32) / 127.5 - 1
        return engine_family.scale_latents(engine_family.encode_pixels(pixels)[0])

    shapes = write_concept(tmp_path / "shapes", 4, colour=(40, 160, 90), caption="", size=32)
    spread = torch.cat(
        [
            engine_family.scale_latents(
                engine_family.encode_pixels(
                    torch.from_numpy(np.asarray(Image.open(image.path), dtype=np.float32) / 127.5 - 1)
                    .permute(2, 0, 1)
                    .unsqueeze(0)
                )[0]
            )
            for image in shapes
        ]
    ).std()
    assert 0.4 < float(spread) < 2.5
    assert float((latents((214, 48, 49)) - latents((41, 128, 185))).pow(2).mean()) > 0.1


# --- adapter targets and types -----------------------------------------------------------------------


def test_lora_target_presets_choose_the_documented_modules(tiny_models: dict[str, Path]) -> None:
    family = family_class("sd15")(str(tiny_models["sd15"]), CPU, torch.float32)
    names = [name for name, _ in family.load_denoiser().named_modules()]

    def chosen(preset: str) -> set[str]:  # the kinds of module chosen, by the end of their names
        pattern = re.compile(family.lora_target_pattern(preset))
        kinds = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                 "conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")  # fmt: skip
        picked = [name for name in names if pattern.match(name)]
        assert all(name.endswith(kinds) for name in picked)
        return {kind for kind in kinds if any(name.endswith(kind) for name in picked)}

    assert chosen("attention") == {"to_q", "to_k", "to_v", "to_out.0"}
    assert chosen("all_linear") == {
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "ff.net.0.proj",
        "ff.net.2",
        "proj_in",
        "proj_out",
    }
    assert chosen("all_linear+conv") >= chosen("all_linear") | {
        "conv1",
        "conv2",
        "time_emb_proj",
        "downsamplers.0.conv",
    }
    assert not re.match(family.lora_target_pattern("all_linear+conv"), "conv_in")  # outside the blocks
    flux = family_class("flux")(str(tiny_models["flux"]), CPU, torch.float32)
    with pytest.raises(EngineError, match="UNet"):
        flux.lora_target_pattern("all_linear+conv")


def test_on_real_flux_dev_the_default_targets_cover_every_block_linear() -> None:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(
            in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        )  # fmt: skip
    block_linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name.startswith(("transformer_blocks.", "single_transformer_blocks."))
    ]
    assert len(block_linears) == 494
    flux = family_class("flux")
    pattern = re.compile(flux.lora_target_pattern(flux, "all_linear"))  # type: ignore[arg-type]  # class attributes only
    assert all(pattern.match(name) for name in block_linears)
    assert not pattern.match("proj_out") and not pattern.match("x_embedder")  # outside the blocks


@pytest.mark.parametrize(
    "config",
    [
        # stable-diffusion-3.5-large and -medium transformer/config.json (the fields that shape the tree).
        {"num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432, "qk_norm": "rms_norm"},
        {"num_layers": 24, "num_attention_heads": 24, "caption_projection_dim": 1536, "qk_norm": "rms_norm",
         "dual_attention_layers": tuple(range(13)), "pos_embed_max_size": 384},
    ],
    ids=["large", "medium"],
)  # fmt: skip
def test_on_real_sd35_the_default_targets_cover_every_block_linear(config: dict[str, Any]) -> None:
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(
            attention_head_dim=64, joint_attention_dim=4096, pooled_projection_dim=2048, **config
        )
    block_linears = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")
    ]  # fmt: skip
    # Per block: q, k, v, out and the context's q, k, v (+ out and its MLP but in the last block), the
    # image MLP, two modulations; medium's first 13 blocks add the dual attention's q, k, v, out.
    blocks = config["num_layers"]
    dual = len(config.get("dual_attention_layers", ()))
    assert len(block_linears) == blocks * 14 - 3 + dual * 4
    sd3 = family_class("sd3")
    pattern = re.compile(sd3.lora_target_pattern(sd3, "all_linear"))  # type: ignore[arg-type]  # class attributes only
    assert all(pattern.match(name) for name in block_linears)
    assert not pattern.match("proj_out") and not pattern.match("context_embedder")  # outside the blocks


def test_on_real_zimage_the_default_targets_cover_every_block_linear() -> None:
    from diffusers import ZImageTransformer2DModel

    with torch.device("meta"):
        model = ZImageTransformer2DModel()  # Z-Image-Turbo's configuration is the class's default
    block_linears = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(("layers.", "noise_refiner.", "context_refiner."))
    ]  # fmt: skip
    # 30 joint layers and 2 noise refiners with q, k, v, out, a SwiGLU's three and a modulation; 2
    # context refiners without the modulation.
    assert len(block_linears) == 32 * 8 + 2 * 7 == 270
    zimage = family_class("zimage")
    pattern = re.compile(zimage.lora_target_pattern(zimage, "all_linear"))  # type: ignore[arg-type]  # class attributes only
    assert all(pattern.match(name) for name in block_linears)
    assert not pattern.match("cap_embedder.1") and not pattern.match("t_embedder.mlp.0")  # outside the blocks


def test_on_real_qwen_image_the_default_targets_cover_every_block_linear() -> None:
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        model = QwenImageTransformer2DModel()  # Qwen-Image's configuration is the class's default
    block_linears = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("transformer_blocks.")
    ]  # fmt: skip
    # Per block: both streams' q, k, v and out, their MLPs (in, out) and modulations.
    assert len(block_linears) == 60 * 14 == 840
    qwen = family_class("qwenimage")
    pattern = re.compile(qwen.lora_target_pattern(qwen, "all_linear"))  # type: ignore[arg-type]  # class attributes only
    assert all(pattern.match(name) for name in block_linears)
    assert not pattern.match("txt_in") and not pattern.match("img_in")  # outside the blocks


def test_on_real_flux2_klein_the_default_targets_cover_every_block_linear() -> None:
    from diffusers import Flux2Transformer2DModel

    from bench import gpu

    config = gpu.architectures()["flux2-klein-9b"]["config"]  # FLUX.2 [klein] 9B (bench/gpu.py checks its size)
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**{key: value for key, value in config.items() if not key.startswith("_")})
    block_linears = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(("transformer_blocks.", "single_transformer_blocks."))
    ]  # fmt: skip
    # A double block: both streams' q, k, v and out and their SwiGLU in and out; a single block: its two
    # fused projections. The modulation is shared, outside the blocks.
    assert len(block_linears) == 8 * 12 + 24 * 2 == 144
    flux2 = family_class("flux2-klein")
    pattern = re.compile(flux2.lora_target_pattern(flux2, "all_linear"))  # type: ignore[arg-type]  # class attributes only
    assert all(pattern.fullmatch(name) for name in block_linears)
    assert not pattern.fullmatch("transformer_blocks.0.attn.to_out")  # the ModuleList around to_out.0
    for outside in ("x_embedder", "context_embedder", "double_stream_modulation_img.linear", "proj_out"):
        assert not pattern.fullmatch(outside)
    attention = re.compile(flux2.lora_target_pattern(flux2, "attention"))  # type: ignore[arg-type]
    assert attention.fullmatch("single_transformer_blocks.3.attn.to_qkv_mlp_proj")
    assert not attention.fullmatch("transformer_blocks.0.ff.linear_in")


def test_on_real_hidream_the_default_targets_cover_every_block_linear() -> None:
    from diffusers import HiDreamImageTransformer2DModel

    from bench import gpu

    config = gpu.architectures()["hidream"]["config"]  # HiDream-I1 (bench/gpu.py checks its size: 17.1 B)
    with torch.device("meta"):
        model = HiDreamImageTransformer2DModel(
            **{key: value for key, value in config.items() if not key.startswith("_")}
        )
    block_linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(("double_stream_blocks.", "single_stream_blocks."))
    ]
    # A double block: both streams' q, k, v and out, the modulation, the image stream's mixture of experts
    # (a shared and 4 routed SwiGLUs, 3 linears each) and the caption stream's SwiGLU; a single block: the
    # image stream's half of that.
    assert len(block_linears) == 16 * (8 + 1 + 5 * 3 + 3) + 32 * (4 + 1 + 5 * 3) == 1072
    hidream = family_class("hidream")
    pattern = re.compile(hidream.lora_target_pattern(hidream, "all_linear"))  # type: ignore[arg-type]  # class attributes only
    assert all(pattern.match(name) for name in block_linears)
    attention = re.compile(hidream.lora_target_pattern(hidream, "attention"))  # type: ignore[arg-type]  # class attributes only
    assert sum(bool(attention.match(name)) for name in block_linears) == 16 * 8 + 32 * 4


# Each adapter type on the first families; the later ones (whose export differs only in the prefix and
# the ComfyUI map, not per adapter type) with a LoRA and a LoKr, to keep the suite's time.
ADAPTER_RUNS = [
    (family, lora_type)
    for family in FAMILIES
    for lora_type in ("lora", "dora", "lokr", "loha")
    if family in ("sd15", "sdxl", "flux", "flux-kontext")
    or lora_type in ("lora", "lokr")
    or (family, lora_type) == ("ideogram4", "dora")  # DoRA's magnitudes through Ideogram 4's fused attention
]
# Families whose ComfyUI file cannot hold every adapter kind: Ideogram 4's attention is one fused qkv weight there,
# into which LoRA and DoRA fuse exactly and LoKr and LoHa do not.
NO_COMFYUI_FILE = {("ideogram4", "lokr"), ("ideogram4", "loha")}


@pytest.mark.slow
@pytest.mark.parametrize(("family", "lora_type"), ADAPTER_RUNS)
def test_every_adapter_type_trains_exports_for_comfyui_and_generates(
    family: str, lora_type: str, tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]
) -> None:
    from training.engine import DatasetPair

    base = tiny_models[family]
    pairs = [DatasetPair(source=red[i], target=red[i + 1], instruction="move the disc") for i in range(3)]
    targets = "all_linear+conv" if family == "sd15" and lora_type == "lora" else "all_linear"
    result = train(
        spec_for(
            base,
            tmp_path / "out",
            red,
            pairs=pairs if family_facts(family).needs_pairs else [],
            steps=3,
            learning_rate=1e-2,
            lora_type=lora_type,
            lora_targets=targets,
        ),
        SilentCallbacks(),
    )
    comfyui = family_facts(family).comfyui and (family, lora_type) not in NO_COMFYUI_FILE
    if comfyui:
        # Every module of the kohya/LyCORIS file is one ComfyUI maps onto the model.
        kohya = load_file(result.kohya_path)
        config = json.loads((base / family_facts(family).denoiser / "config.json").read_text())
        known = comfyui_lora_names(family, config)
        assert unmapped_kohya_modules(kohya, known) == []
    else:
        assert result.kohya_path is None  # ComfyUI cannot run the family, or read this adapter in its names
    metadata = read_metadata(result.kohya_path or result.weights_path)
    assert metadata["ss_network_dim"] == "4" and metadata["modelspec.trigger_phrase"] == "zxq"
    assert metadata["modelspec.architecture"].endswith("/lora") and metadata["base_model"] == base.name
    assert metadata["lora_type"] == lora_type

    # Both files load for generation and change the output the same way.
    common: dict[str, Any] = {
        "base_model": str(base),
        "prompt": "zxq, a disc",
        "steps": 2,
        "seed": 3,
        "width": 32,
        "height": 32,
    }
    if family_facts(family).needs_pairs:  # an edit model generates from a source image
        common["image"] = Image.open(red[0].path).convert("RGB")
    plain = np.asarray(generate(**common)[0], dtype=np.float32)
    tuned = np.asarray(generate(**common, lora_path=result.weights_path)[0], dtype=np.float32)
    assert np.abs(plain - tuned).mean() > 0.01
    if not comfyui:
        return
    from_kohya = np.asarray(generate(**common, lora_path=result.kohya_path)[0], dtype=np.float32)
    if lora_type == "dora":
        # The kohya layout stores DoRA's magnitude as `dora_scale`, which readers apply against the base
        # weight's norm: close to the PEFT result, not identical.
        assert np.abs(tuned - from_kohya).mean() < np.abs(plain - tuned).mean()
    else:
        assert np.abs(tuned - from_kohya).mean() < 0.5


# --- data order --------------------------------------------------------------------------------------


def test_epochs_visit_every_image_its_repeats_once_shuffled_one_bucket_per_batch() -> None:
    buckets = [(32, 32)] * 5 + [(48, 24)] * 3
    repeats = [1, 1, 1, 2, 1, 1, 1, 0]  # the last one is held out
    sampler = EpochSampler(buckets, repeats, batch_size=2, seed=7)
    epoch = [sampler.batch(number) for number in range(sampler.batches_per_epoch)]
    seen = Counter(index for batch in epoch for index in batch)
    for index, count in enumerate(repeats):
        if count == 0:
            assert index not in seen
        else:
            assert seen[index] >= count  # a short last batch of a bucket is filled from its start
    assert sum(seen.values()) == sampler.batches_per_epoch * 2 <= sum(repeats) + 2 * len(set(buckets))
    assert all(len({buckets[index] for index in batch}) == 1 for batch in epoch)
    second = [sampler.batch(number) for number in range(sampler.batches_per_epoch, 2 * sampler.batches_per_epoch)]
    assert second != epoch  # reshuffled each epoch
    # Stateless: a fresh sampler (a resumed run) gives the same batch for the same number.
    assert EpochSampler(buckets, repeats, batch_size=2, seed=7).batch(sampler.batches_per_epoch + 1) == second[1]


@pytest.mark.slow
def test_repeats_lengthen_an_epoch(tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]) -> None:
    recorder = Recorder()
    train(spec_for(tiny_models["sd15"], tmp_path / "out", red, steps=1, repeats=3), recorder)
    assert any("6 training images (0 held out for validation), 9 batches per epoch" in log for log in recorder.logs)


# --- crash safety ------------------------------------------------------------------------------------


def test_the_default_snapshot_cadence_is_inside_a_default_run() -> None:
    spec = TrainingSpec(base_model="x", output_dir=Path("x"), images=[], trigger_word="")
    assert spec.snapshot_every_steps < spec.steps < spec.save_every  # the user's saves alone would never come
    assert spec.snapshot_every_seconds == 600.0  # the documented 10 minutes (a default, not a timing)


@pytest.mark.slow
def test_snapshots_are_taken_whatever_save_every_says_and_resume_bit_exactly(
    tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]
) -> None:
    options = {"steps": 8, "snapshot_every_steps": 3, "ema": True, "ema_decay": 0.9, "caption_dropout_rate": 0.3}
    whole = load_file(
        train(spec_for(tiny_models["sd15"], tmp_path / "whole", red, **options), SilentCallbacks()).weights_path
    )
    spec = spec_for(tiny_models["sd15"], tmp_path / "parts", red, **options)
    interrupted = Recorder(cancel_after=7)
    with pytest.raises(TrainingCancelled):
        train(spec, interrupted)
    assert interrupted.snapshots == [3, 6] and interrupted.checkpoints == []
    assert [p.name for p in list_checkpoints(spec.checkpoint_dir, kind=None)] == ["snapshot-0000006"]  # newest only
    resumed = Recorder()
    result = train(spec, resumed)
    assert result.resumed_from_step == 6 and resumed.steps[0] == 7
    finished = load_file(result.weights_path)
    assert all(torch.equal(finished[key], whole[key]) for key in whole)


# --- loss and noise ----------------------------------------------------------------------------------


def test_min_snr_gamma_weights_down_easy_timesteps(tiny_models: dict[str, Path]) -> None:
    family = family_class("sd15")(str(tiny_models["sd15"]), CPU, torch.float32)
    latents = torch.randn(2, 4, 8, 8)
    levels = torch.tensor([0.02, 0.95])  # nearly clean (high SNR), nearly pure noise (low SNR)
    plain = family.add_noise(latents, torch.Generator().manual_seed(0), NoiseSettings(), levels=levels)
    weighted = family.add_noise(
        latents, torch.Generator().manual_seed(0), NoiseSettings(min_snr_gamma=5.0), levels=levels
    )
    assert plain.weights is None and weighted.weights is not None
    assert float(weighted.weights[0]) < 0.2  # SNR far above 5: weight 5 / SNR
    assert float(weighted.weights[1]) == pytest.approx(1.0)  # SNR below 5: weight 1
    assert torch.equal(plain.noisy, weighted.noisy)


def test_noise_offset_shifts_each_channel_of_the_noise(tiny_models: dict[str, Path]) -> None:
    family = family_class("sd15")(str(tiny_models["sd15"]), CPU, torch.float32)
    latents = torch.zeros(256, 4, 16, 16)

    def channel_mean_spread(offset: float) -> float:
        noised = family.add_noise(latents, torch.Generator().manual_seed(1), NoiseSettings(noise_offset=offset))
        return float(noised.target.mean(dim=(2, 3)).std())

    assert channel_mean_spread(0.0) < 0.1  # white noise: channel means near 0 (1/16 spread)
    assert channel_mean_spread(0.3) == pytest.approx(0.3, rel=0.25)


def test_flow_timestep_sampling_and_shift(tiny_models: dict[str, Path]) -> None:
    family = family_class("flux")(str(tiny_models["flux"]), CPU, torch.float32)

    def sigmas(settings: NoiseSettings, side: int = 8) -> torch.Tensor:
        latents = torch.zeros(4000, 16, side, side)
        return family.add_noise(latents, torch.Generator().manual_seed(2), settings).timesteps

    uniform = sigmas(NoiseSettings(timestep_sampling="uniform", timestep_shift=1.0))
    assert float(uniform.mean()) == pytest.approx(0.5, abs=0.02) and float(uniform.std()) == pytest.approx(
        0.289, abs=0.02
    )
    late = sigmas(NoiseSettings(timestep_sampling="logit_normal", logit_mean=1.0, timestep_shift=1.0))
    assert float(late.median()) == pytest.approx(float(torch.sigmoid(torch.tensor(1.0))), abs=0.02)
    narrow = sigmas(NoiseSettings(timestep_sampling="sigmoid", sigmoid_scale=0.3, timestep_shift=1.0))
    assert float(narrow.std()) < float(sigmas(NoiseSettings(timestep_sampling="sigmoid", timestep_shift=1.0)).std())
    shifted = sigmas(NoiseSettings(timestep_sampling="uniform", timestep_shift=3.0))
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.02)  # 3s / (1 + 2s) at s = 0.5
    # Automatic: FLUX's resolution-dependent shift, larger for larger images.
    assert family.timestep_shift(NoiseSettings(), 128, 128) == pytest.approx(np.exp(1.15), rel=1e-3)  # 4096 tokens
    assert family.timestep_shift(NoiseSettings(), 8, 8) < family.timestep_shift(NoiseSettings(), 32, 32)
    assert float(sigmas(NoiseSettings(), side=32).median()) > float(sigmas(NoiseSettings(), side=8).median())


def test_hidream_shifts_by_its_schedulers_fixed_shift_whatever_the_size(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """HiDream-I1 Full's flow-matching Euler scheduler (shift 3.0), or a UniPC one with flow sigmas, as some
    HiDream folders have (its `flow_shift`)."""
    import json
    import shutil

    base = tmp_path / "hidream"
    shutil.copytree(tiny_models["hidream"] / "transformer", base / "transformer")
    shutil.copytree(tiny_models["hidream"] / "vae", base / "vae")
    shutil.copytree(tiny_models["hidream"] / "scheduler", base / "scheduler")
    euler = family_class("hidream")(str(base), CPU, torch.float32)
    assert euler.timestep_shift(NoiseSettings(), 8, 8) == euler.timestep_shift(NoiseSettings(), 64, 64) == 3.0
    unipc = {"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": True, "flow_shift": 6.0,
             "prediction_type": "flow_prediction", "num_train_timesteps": 1000}  # fmt: skip
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(unipc), encoding="utf-8")
    flow = family_class("hidream")(str(base), CPU, torch.float32)
    assert flow.timestep_shift(NoiseSettings(), 32, 32) == 6.0
    assert flow.timestep_shift(NoiseSettings(timestep_shift=2.0), 32, 32) == 2.0


def test_krea2_turbo_shifts_by_its_fixed_mu_and_the_raw_model_by_the_image_size(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Krea 2 Raw: the scheduler's shift, growing with the token count; Krea 2 Turbo (`is_distilled` in the
    pipeline's config): Krea2Pipeline's fixed mu 1.15 at every size. The user's value wins over both."""
    import json
    import math
    import shutil

    base = tmp_path / "krea2"
    shutil.copytree(tiny_models["krea2"], base)
    raw = family_class("krea2")(str(base), CPU, torch.float32)
    assert raw.timestep_shift(NoiseSettings(), 8, 8) < raw.timestep_shift(NoiseSettings(), 64, 64)
    index = json.loads((base / "model_index.json").read_text(encoding="utf-8"))
    (base / "model_index.json").write_text(json.dumps({**index, "is_distilled": True}), encoding="utf-8")
    turbo = family_class("krea2")(str(base), CPU, torch.float32)
    assert turbo.timestep_shift(NoiseSettings(), 8, 8) == turbo.timestep_shift(NoiseSettings(), 64, 64)
    assert turbo.timestep_shift(NoiseSettings(), 8, 8) == pytest.approx(math.exp(1.15))
    assert turbo.timestep_shift(NoiseSettings(timestep_shift=2.0), 8, 8) == 2.0


def test_prx_trains_at_its_own_published_size_and_refuses_the_dc_ae_models(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """PRX is published at 256, 512 and 1024 px, each model saying its size in its pipeline config: the default
    resolution (and the cost estimate's) is that. Its DC-AE models are not trained, and say so."""
    import json
    import shutil

    from contract.families import local_native_resolution

    base = tmp_path / "prx"
    shutil.copytree(tiny_models["prx"], base)
    assert family_class("prx")(str(base), CPU, torch.float32).default_resolution() == 64
    assert local_native_resolution(str(base), "prx") == 64
    index = json.loads((base / "model_index.json").read_text(encoding="utf-8"))
    (base / "model_index.json").write_text(
        json.dumps({**index, "default_sample_size": 512, "vae": ["diffusers", "AutoencoderDC"]}), encoding="utf-8"
    )
    assert local_native_resolution(str(base), "prx") == 512
    with pytest.raises(EngineError, match="PRX on the AutoencoderDC VAE"):
        family_class("prx")(str(base), CPU, torch.float32)


def test_ideogram4_draws_sigmas_as_its_pipeline_schedules_them_for_the_image_size(tiny_models: dict[str, Path]) -> None:
    """Ideogram 4's schedule mean moves by 0.5 * log(area / 512²): as a timestep shift, sqrt(area) / 512 (1 at
    512 px, 2 at 1024 px, whatever the model); the user's value wins."""
    import math

    family = family_class("ideogram4")(str(tiny_models["ideogram4"]), CPU, torch.float32)
    scale = family.vae_scale()
    assert family.timestep_shift(NoiseSettings(), 512 // scale, 512 // scale) == pytest.approx(1.0)
    assert family.timestep_shift(NoiseSettings(), 1024 // scale, 1024 // scale) == pytest.approx(2.0)
    assert family.timestep_shift(NoiseSettings(), 512 // scale, 2048 // scale) == pytest.approx(2.0)
    assert family.timestep_shift(NoiseSettings(timestep_shift=3.0), 8, 8) == 3.0
    # A logit-normal sigma shifted by it is the pipeline's logit-normal with the mean moved (sigmoid(z + mu)).
    z, mu = torch.tensor(0.3), 0.5 * math.log(1024 * 1024 / 512**2)
    shift = 2.0
    assert float(shift * torch.sigmoid(z) / (1 + (shift - 1) * torch.sigmoid(z))) == pytest.approx(
        float(torch.sigmoid(z + mu))
    )


def test_loss_types_and_masks() -> None:
    prediction = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[0.0, 0.0], [0.0, 4.0]]]])
    mse = reduce_loss(elementwise_loss(prediction, target, "mse", 0.1))
    huber = reduce_loss(elementwise_loss(prediction, target, "huber", 0.1))
    smooth = reduce_loss(elementwise_loss(prediction, target, "smooth_l1", 0.1))
    assert float(mse) == pytest.approx(16 / 4)
    assert float(huber) == pytest.approx(0.1 * (4 - 0.05) / 4)  # linear beyond delta: an outlier weighs little
    assert float(smooth) == pytest.approx((4 - 0.05) / 4)
    mask = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]])  # the outlier is masked out
    assert float(reduce_loss(elementwise_loss(prediction, target, "mse", 0.1), mask=mask)) == 0.0
    weights = torch.tensor([0.25])
    assert float(reduce_loss(elementwise_loss(prediction, target, "mse", 0.1), weights=weights)) == pytest.approx(1.0)


@pytest.mark.slow
def test_masked_loss_reads_the_alpha_channel(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    images = []
    for index in range(4):
        image = Image.new("RGBA", (32, 32), (200, 30, 30, 255))
        image.paste((0, 0, 0, 0), (0, 0, 16, 32))  # the left half is transparent
        path = tmp_path / f"{index}.png"
        image.save(path)
        images.append(DatasetImage(path=path, name=path.name, caption="zxq"))
    spec = spec_for(tiny_models["sd15"], tmp_path / "out", images, steps=2, masked_loss=True)
    train(spec, SilentCallbacks())
    cache = Cache(**torch.load(next(spec.cache_dir.glob("*.pt")), weights_only=False))
    assert cache.masks is not None
    mask = cache.masks[0][0]
    half = mask.shape[-1] // 2  # at latent size: the transparent left half weighs 0, the right half 1
    assert float(mask[:, : half - 1].max()) == 0.0 and float(mask[:, half + 1 :].min()) == 1.0


# --- exported weights ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ema_exports_the_averaged_weights(
    tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]
) -> None:
    live = load_file(
        train(spec_for(tiny_models["sd15"], tmp_path / "live", red, steps=6), SilentCallbacks()).weights_path
    )
    averaged = load_file(
        train(
            spec_for(tiny_models["sd15"], tmp_path / "ema", red, steps=6, ema=True, ema_decay=0.9), SilentCallbacks()
        ).weights_path
    )
    ups = [key for key in live if "lora_B" in key]
    # LoRA "up" weights start at zero and grow: their average over the run lags behind the live ones.
    live_norm = sum(float(live[key].norm()) for key in ups)
    averaged_norm = sum(float(averaged[key].norm()) for key in ups)
    assert 0 < averaged_norm < live_norm


@pytest.mark.slow
def test_prior_preservation_keeps_the_class_prompt_close_to_the_base(
    tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]
) -> None:
    from training.engine.evaluate import denoising_loss

    base = str(tiny_models["sd15"])
    options = {"steps": 30, "learning_rate": 3e-3}
    free = train(spec_for(tiny_models["sd15"], tmp_path / "free", red, **options), SilentCallbacks())
    held = train(
        spec_for(
            tiny_models["sd15"],
            tmp_path / "held",
            red,
            prior_preservation_class="thing",
            prior_preservation_weight=5.0,
            **options,
        ),
        SilentCallbacks(),
    )
    paths = [image.path for image in red]

    def change(weights: Path) -> float:  # how much the class prompt's behaviour moved from the base's
        base_loss = denoising_loss(base, paths, "thing, a disc", size=32)
        return abs(denoising_loss(base, paths, "thing, a disc", size=32, weights=weights) - base_loss)

    assert change(held.weights_path) < change(free.weights_path)
    spec = spec_for(Path("x"), Path("x"), [], prior_preservation_class="thing")
    assert class_caption("zxq, a disc", spec) == "thing, a disc"
    assert class_caption("Zxq on a beach", spec) == "thing on a beach"  # found in any case, as with_trigger does
    odd = spec_for(Path("x"), Path("x"), [], trigger_word="<zxq>", prior_preservation_class="thing")
    assert class_caption("a <zxq> disc", odd) == "a thing disc"
    # Without a trigger word there is nothing to replace: refused before any work.
    plain = write_concept(tmp_path / "plain", 2, colour=(1, 2, 3), caption="a disc")
    with pytest.raises(EngineError, match="set a trigger word"):
        train(
            spec_for(tiny_models["sd15"], tmp_path / "bad2", plain, trigger_word="", prior_preservation_class="thing"),
            SilentCallbacks(),
        )


# --- correctness details ------------------------------------------------------------------------------


def test_sdxl_size_conditioning_records_the_original_size_and_crop() -> None:
    # A 200x100 image is resized to 128x64 to cover the 64x64 bucket, then 32 columns are cut on each side.
    assert bucket_crop((200, 100), (64, 64)) == (0, 32)
    assert bucket_crop((100, 200), (64, 64)) == (32, 0)


@pytest.mark.slow
def test_sdxl_caches_per_image_time_ids_and_zeros_for_dropped_captions(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    wide = Image.new("RGB", (96, 48), (10, 200, 30))
    path = tmp_path / "wide.png"
    wide.save(path)
    images = [DatasetImage(path=path, name="wide.png", caption="zxq")]
    spec = spec_for(tiny_models["sdxl"], tmp_path / "out", images, steps=1, batch_size=1)
    train(spec, SilentCallbacks())
    cache = Cache(**torch.load(next(spec.cache_dir.glob("*.pt")), weights_only=False))
    width, height = cache.buckets[0]
    assert cache.time_ids is not None
    assert cache.time_ids[0].tolist() == [48, 96, *bucket_crop((96, 48), (width, height)), height, width]
    # SDXL's pipeline feeds zeros, not the empty caption's encoding, as "no prompt".
    assert all(float(value[0].abs().max()) == 0.0 for value in cache.prompts.values())


@pytest.mark.slow
def test_long_captions_are_reported_not_silently_cut(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    long = "zxq, " + "a very detailed red disc " * 10
    images = write_concept(tmp_path / "d", 2, colour=(200, 30, 30), caption=long, size=32)
    recorder = Recorder()
    train(spec_for(tiny_models["sd15"], tmp_path / "out", images, steps=1, batch_size=1), recorder)
    assert any("caption longer than the text encoder reads" in log and "77 read" in log for log in recorder.logs)


@pytest.mark.slow
def test_prodigy_runs_at_its_usual_settings(
    tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]
) -> None:
    recorder = Recorder()
    result = train(
        spec_for(tiny_models["sd15"], tmp_path / "out", red, optimizer="prodigy", learning_rate=1.0), recorder
    )
    weights = load_file(result.weights_path)
    assert any(float(tensor.abs().max()) > 0 for key, tensor in weights.items() if "lora_B" in key)
    assert not any("prodigy finds its own step size" in log for log in recorder.logs)


@pytest.mark.slow
def test_progress_reports_a_smoothed_loss(
    tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]
) -> None:
    recorder = Recorder()
    train(spec_for(tiny_models["sd15"], tmp_path / "out", red, steps=12), recorder)
    assert recorder.smoothed[0] == recorder.losses[0]
    assert all(
        low <= value <= high
        for value, low, high in zip(
            recorder.smoothed, [min(recorder.losses)] * 12, [max(recorder.losses)] * 12, strict=True
        )
    )
    assert recorder.smoothed[-1] != recorder.losses[-1]


def test_validation_split_holds_out_a_share_and_never_everything(
    tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]
) -> None:
    from training.engine.data import PreparedItem
    from training.engine.trainer.validation import validation_indices

    items = [PreparedItem(name=str(i), caption="", bucket=(32, 32), pixels=np.zeros(1)) for i in range(10)]
    spec = spec_for(Path("x"), tmp_path, [], validation_split=0.2)
    held = validation_indices(spec, items)
    assert len(held) == 2 and held == validation_indices(spec, items)  # seeded
    everything = [PreparedItem(name="a", caption="", bucket=(32, 32), pixels=np.zeros(1), validation=True)]
    with pytest.raises(EngineError, match="hold out all"):
        validation_indices(spec, everything)


# --- text encoder adapters ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_text_encoder_lora_trains_at_its_own_rate_and_exports_in_both_layouts(
    family: str, tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]
) -> None:
    from training.engine.export import from_kohya

    base = tiny_models[family]
    spec = spec_for(
        base, tmp_path / "out", red, steps=4, learning_rate=1e-2, train_text_encoder=True,
        text_encoder_learning_rate=0.0, caption_dropout_rate=0.5,
    )  # fmt: skip
    frozen = train(spec, SilentCallbacks())
    state = load_file(frozen.weights_path)
    encoders = ["text_encoder"] if family == "sd15" else ["text_encoder", "text_encoder_2"]
    assert {key.split(".", 1)[0] for key in state} == {"unet", *encoders}
    # A text-encoder learning rate of 0 leaves its LoRA "up" weights at their initial zeros.
    assert all(float(t.abs().max()) == 0 for k, t in state.items() if k.startswith("text_encoder") and "lora_B" in k)

    moving = train(
        spec_for(base, tmp_path / "moving", red, steps=4, learning_rate=1e-2, train_text_encoder=True),
        SilentCallbacks(),
    )
    state = load_file(moving.weights_path)
    assert any(float(t.abs().max()) > 0 for k, t in state.items() if k.startswith("text_encoder") and "lora_B" in k)
    kohya = load_file(moving.kohya_path)
    prefixes = ["lora_te_"] if family == "sd15" else ["lora_te1_", "lora_te2_"]
    for prefix in prefixes:  # the names ComfyUI's CLIP key map reads
        names = {key.split(".")[0] for key in kohya if key.startswith(prefix)}
        assert names and all(
            re.fullmatch(rf"{prefix}text_model_encoder_layers_\d+_(self_attn_(q|k|v|out)_proj|mlp_fc[12])", name)
            for name in names
        )
    modules = {}
    for key in state:
        component, rest = key.split(".", 1)
        modules.setdefault(component, set()).add(rest.rsplit(".lora_", 1)[0])
    restored = from_kohya(kohya, {component: sorted(names) for component, names in modules.items()}, rank=4)
    assert restored.keys() == state.keys() and all(torch.equal(restored[k], state[k]) for k in state)

    common: dict[str, Any] = {
        "base_model": str(base),
        "prompt": "zxq",
        "steps": 2,
        "seed": 1,
        "width": 32,
        "height": 32,
    }
    unet_only = {k: v for k, v in state.items() if k.startswith("unet.")}
    from safetensors.torch import save_file

    save_file(unet_only, str(tmp_path / "unet_only.safetensors"))
    with_encoders = np.asarray(generate(**common, lora_path=moving.weights_path)[0], dtype=np.float32)
    without = np.asarray(generate(**common, lora_path=tmp_path / "unet_only.safetensors")[0], dtype=np.float32)
    assert np.abs(with_encoders - without).mean() > 0.01  # the text encoders' adapters are loaded and act


@pytest.mark.slow
def test_a_text_encoder_run_resumes_bit_exactly(
    tiny_models: dict[str, Path], tmp_path: Path, red: list[DatasetImage]
) -> None:
    options = {"steps": 6, "save_every": 3, "train_text_encoder": True, "caption_dropout_rate": 0.3}
    whole = load_file(
        train(spec_for(tiny_models["sdxl"], tmp_path / "whole", red, **options), SilentCallbacks()).weights_path
    )
    spec = spec_for(tiny_models["sdxl"], tmp_path / "parts", red, **options)
    with pytest.raises(TrainingCancelled):
        train(spec, Recorder(cancel_after=4))
    result = train(spec, SilentCallbacks())
    assert result.resumed_from_step == 3
    finished = load_file(result.weights_path)
    assert all(torch.equal(finished[key], whole[key]) for key in whole)


def test_text_encoder_training_is_refused_where_it_cannot_run(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="text encoders"):
        train(
            spec_for(
                tiny_models["flux"],
                tmp_path / "f",
                write_concept(tmp_path / "d", 2, colour=(1, 2, 3), caption="x"),
                train_text_encoder=True,
            ),
            SilentCallbacks(),
        )
    with pytest.raises(EngineError, match="LORA"):
        train(
            spec_for(tiny_models["sd15"], tmp_path / "s", [], train_text_encoder=True, training_type="FULL"),
            SilentCallbacks(),
        )
