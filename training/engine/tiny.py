"""Small random-weight base models built locally from configs, saved as ordinary diffusers folders.

They use the real pipeline classes, so every code path (loading from a path, training, LoRA export,
generation) runs on a CPU in seconds with nothing downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.engine.errors import EngineError

if TYPE_CHECKING:
    from transformers import CLIPTextConfig

FAMILIES = (
    "sd15",
    "sdxl",
    "flux",
    "flux-kontext",
    "sd3",
    "chroma",
    "zimage",
    "qwenimage",
    "flux2-klein",
    "flux2",
    "hidream",
)


def _bytes_to_unicode() -> dict[int, str]:
    # The printable stand-ins byte-level BPE tokenizers (GPT-2, CLIP) use for the 256 byte values.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _write_clip_tokenizer(folder: Path) -> int:
    """A byte-level CLIP tokenizer with no merges: every byte is one token, so distinct words get
    distinct ids. Returns its vocab size.

    It is loaded back from `vocab.json`/`merges.txt` before it is saved: a `CLIPTokenizer` built with
    file-path arguments under transformers 5 keeps a two-entry vocabulary and would save that as its
    `tokenizer.json`, mapping every prompt to the same ids."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = sorted(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for symbol in symbols:
        vocab[symbol] = len(vocab)
    for symbol in symbols:
        vocab[symbol + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}), encoding="utf-8"
    )

    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    if len(tokenizer) != len(vocab):
        raise EngineError(f"the tiny CLIP tokenizer loaded with {len(tokenizer)} tokens instead of {len(vocab)}")
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def _clip_config(vocab_size: int, *, positions: int = 77) -> CLIPTextConfig:
    """A two-layer CLIP text encoder for the byte-level tokenizer above, reading `positions` tokens."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=positions,
        projection_dim=32,
    )


def _small_vae(**overrides: object) -> object:
    """A two-block VAE (downsampling by 2), so 64-pixel images train in milliseconds."""
    from diffusers import AutoencoderKL

    options: dict = {
        "block_out_channels": [32, 64],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "sample_size": 64,
        # One normalisation group (diffusers' default is 32, one per channel here): a per-channel
        # GroupNorm removes each channel's spatial mean, so a random encoder maps solid red and solid
        # blue to nearly the same latent means (0.15 apart in unit-variance latents, against ~1-2
        # with one group). Colour is what the learning tests train and measure.
        "norm_num_groups": 1,
    }
    options.update(overrides)
    return AutoencoderKL(**options)


def _calibration_pixels() -> Any:
    """(30, 3, 64, 64) images in [-1, 1]: the synthetic shapes the demo and the tests train on, plus
    solid colours."""
    from io import BytesIO

    import numpy as np
    import torch
    from PIL import Image

    from training.demo_dataset import make_images

    arrays = []
    for picture in make_images(24, seed=1234):
        image = Image.open(BytesIO(picture.content)).convert("RGB").resize((64, 64))
        arrays.append(np.asarray(image, dtype=np.float32))
    for colour in ((255, 0, 0), (0, 0, 255), (0, 200, 0), (255, 255, 255), (0, 0, 0), (128, 128, 128)):
        arrays.append(np.full((64, 64, 3), colour, dtype=np.float32))
    return torch.from_numpy(np.stack(arrays) / 127.5 - 1.0).permute(0, 3, 1, 2)


def calibrate_vae(vae: object, *, with_shift: bool) -> None:
    """Set the VAE's `scaling_factor` (and, for flow models, `shift_factor`) so that the latents of
    ordinary images have unit variance in the denoiser's space, as the real models' factors do.

    A random-weight VAE with SD's factor 0.18215 gives latents with a standard deviation of about
    0.04: solid red and solid blue then differ by an MSE of 0.001 and a dataset carries no signal.
    The statistics come from the synthetic shapes the demo and the tests train on, plus solid colours."""
    import torch

    with torch.no_grad():
        latents = vae.encode(_calibration_pixels()).latent_dist.mean  # type: ignore[attr-defined]
    shift = float(latents.mean()) if with_shift else 0.0
    spread = float((latents - shift).pow(2).mean().sqrt())
    values: dict[str, float] = {"scaling_factor": round(1.0 / spread, 5)}
    if with_shift:
        values["shift_factor"] = round(shift, 5)
    vae.register_to_config(**values)  # type: ignore[attr-defined]


def _flow_vae() -> Any:
    """FLUX's VAE layout, small: 16 latent channels, no quant convs, downsampling by 2, with a measured
    scaling and shift factor (FLUX.1, Chroma, SD 3.5 and Z-Image share it)."""
    vae = _small_vae(block_out_channels=[32, 32], latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    calibrate_vae(vae, with_shift=True)
    return vae


def _flux_scheduler() -> Any:
    """FLUX.1-dev's own schedule (Chroma's too): the shift grows with the image's token count."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def build_tiny_sd15(out_dir: Path, *, seed: int = 0) -> Path:
    """A Stable Diffusion 1.5-shaped pipeline (UNet, VAE, CLIP text encoder) of about 8 MB."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    # Built beside the target and renamed at the end, so a crash never leaves a half-written model.
    staging = _staging(out_dir)
    tokenizer_dir = staging / "tokenizer"
    vocab_size = _write_clip_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        # Attention at both levels, as real SD has it at its high-resolution levels too: the adapters
        # of the default targets then reach the image at full latent resolution.
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        # 8 and 16 channels per group, as real SD's 32 groups of 320-1280 channels hold 10-40: with one
        # channel per group every GroupNorm, conv_norm_out's included, removes each channel's spatial
        # mean, so no caption can move the overall colour of the prediction and a trigger word cannot
        # be learned (measured: 0.00 of the red-blue distance, against 0.2-1.3 with 4 groups).
        norm_num_groups=4,
    )
    # A VAE that downsamples by 4 (SD's by 8): attention over a 64-pixel image's 16x16 latents is cheap
    # on a CPU, where 32x32 made every step four times slower.
    vae = _small_vae(
        block_out_channels=[32, 32, 64],
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
    )
    calibrate_vae(vae, with_shift=False)
    text_encoder = CLIPTextModel(_clip_config(vocab_size))
    # Euler, as SDXL's: good images in few sampling steps, which the tests' generations use.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        timestep_spacing="leading",
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    staging.rename(out_dir)
    return out_dir


def _write_t5_tokenizer(folder: Path) -> int:
    """A unigram T5 tokenizer whose pieces are single characters (and their word-start forms)."""
    from transformers import T5Tokenizer

    characters = [chr(c) for c in range(32, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + c, -1.0) for c in characters] + [(c, -2.0) for c in characters]
    tokenizer = T5Tokenizer(vocab=vocab, unk_id=2, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def _staging(out_dir: Path) -> Path:
    if out_dir.exists():
        raise EngineError(f"{out_dir} already exists; remove it or choose another --out folder")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def build_tiny_sdxl(out_dir: Path, *, seed: int = 0) -> Path:
    """An SDXL-shaped pipeline: UNet with text-time conditioning and two CLIP text encoders."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    out_dir = Path(out_dir)
    staging = _staging(out_dir)
    torch.manual_seed(seed)
    vocab_size = _write_clip_tokenizer(staging / "tokenizer")
    _write_clip_tokenizer(staging / "tokenizer_2")
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        # Cross-attention at both levels, where the real SDXL has none at its highest resolution: here the
        # default LoRA targets (attention and linear layers) would otherwise reach the caption only at 8x8
        # latents, behind random frozen top-level resnets, and a trigger word could not move the image's
        # colour (measured: -0.1 to 0.0 of the red-blue distance after 150 or 400 steps, with offset noise
        # 0, 0.5 or 1 or 4 norm groups, while FULL or conv targets reached +1.4-2.1; with this layout
        # +0.6-1.7 over four seeds in 150 steps).
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8,
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    vae = _small_vae()
    calibrate_vae(vae, with_shift=False)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    pipeline = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=CLIPTextModel(_clip_config(vocab_size)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(vocab_size)),
        tokenizer=CLIPTokenizer.from_pretrained(str(staging / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(staging / "tokenizer_2")),
        scheduler=scheduler,
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    staging.rename(out_dir)
    return out_dir


def build_tiny_flux(out_dir: Path, *, seed: int = 0, kontext: bool = False) -> Path:
    """A FLUX.1-dev-shaped pipeline (guidance embedding, CLIP + T5, 16-channel VAE); Kontext shares it."""
    import torch
    from diffusers import (
        FluxKontextPipeline,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer, T5Tokenizer

    out_dir = Path(out_dir)
    staging = _staging(out_dir)
    torch.manual_seed(seed)
    clip_vocab = _write_clip_tokenizer(staging / "tokenizer")
    t5_vocab = _write_t5_tokenizer(staging / "tokenizer_2")
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        # 4 x 16 = 64 wide, as wide as the 2x2-packed latents (16 x 4): a narrower model would squeeze
        # every token through a random projection that no block adapter can undo.
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    clip = CLIPTextModel(_clip_config(clip_vocab))
    t5 = _tiny_t5(t5_vocab)
    vae = _flow_vae()
    pipeline_class = FluxKontextPipeline if kontext else FluxPipeline
    pipeline = pipeline_class(
        transformer=transformer,
        vae=vae,
        text_encoder=clip,
        text_encoder_2=t5,
        tokenizer=CLIPTokenizer.from_pretrained(str(staging / "tokenizer")),
        tokenizer_2=T5Tokenizer.from_pretrained(str(staging / "tokenizer_2")),
        scheduler=_flux_scheduler(),
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[union-attr]
    staging.rename(out_dir)
    return out_dir


def _tiny_t5(vocab_size: int, width: int = 32) -> object:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=width,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=width // 8,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,  # type: ignore[call-arg]  # PreTrainedConfig keeps extra keywords; its typing omits them
        )
    )


def build_tiny_sd3(out_dir: Path, *, seed: int = 0) -> Path:
    """An SD 3.5 medium-shaped pipeline: an MMDiT whose first block has the dual (image-only) attention
    and RMS-normed q/k, two CLIP encoders with projections and T5, a 16-channel VAE with a shift."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5Tokenizer

    out_dir = Path(out_dir)
    staging = _staging(out_dir)
    torch.manual_seed(seed)
    clip_vocab = _write_clip_tokenizer(staging / "tokenizer")
    _write_clip_tokenizer(staging / "tokenizer_2")
    t5_vocab = _write_t5_tokenizer(staging / "tokenizer_3")
    transformer = SD3Transformer2DModel(
        sample_size=32,  # latent pixels: 64-pixel images over a VAE that downsamples by 2
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        # 4 x 32 = 128 wide: at least as wide as a 2x2 patch of 16-channel latents (see the tiny FLUX),
        # and 64 per block, the ratio of the published models that ComfyUI relies on (it reads the
        # number of blocks off the width: 1536 / 64 = 24 for medium, 2432 / 64 = 38 for large).
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=64,  # T5's width; the two CLIPs' 32 + 32 are padded to it, as in the pipeline
        caption_projection_dim=128,
        pooled_projection_dim=64,  # both CLIPs' 32-wide projections side by side
        pos_embed_max_size=64,  # up to 256-pixel images
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    vae = _flow_vae()
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(_clip_config(clip_vocab)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(clip_vocab)),
        text_encoder_3=_tiny_t5(t5_vocab, width=64),
        tokenizer=CLIPTokenizer.from_pretrained(str(staging / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(staging / "tokenizer_2")),
        tokenizer_3=T5Tokenizer.from_pretrained(str(staging / "tokenizer_3")),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),  # SD 3.5's fixed shift
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    staging.rename(out_dir)
    return out_dir


def build_tiny_chroma(out_dir: Path, *, seed: int = 0) -> Path:
    """A Chroma-shaped pipeline: the tiny FLUX's blocks, modulated by a one-layer approximator from the
    timestep alone, T5 as the only text encoder, and FLUX's 16-channel VAE and scheduler."""
    import torch
    from diffusers import ChromaPipeline, ChromaTransformer2DModel
    from transformers import T5Tokenizer

    out_dir = Path(out_dir)
    staging = _staging(out_dir)
    torch.manual_seed(seed)
    t5_vocab = _write_t5_tokenizer(staging / "tokenizer")
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,  # 64 wide, as the packed latents (see the tiny FLUX)
        num_attention_heads=4,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )
    vae = _flow_vae()
    pipeline = ChromaPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=_tiny_t5(t5_vocab),
        tokenizer=T5Tokenizer.from_pretrained(str(staging / "tokenizer")),
        scheduler=_flux_scheduler(),
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    staging.rename(out_dir)
    return out_dir


# Qwen's chat format, which ZImagePipeline wraps every prompt in (apply_chat_template).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _write_qwen_tokenizer(folder: Path, phrases: tuple[str, ...] = ()) -> int:
    """A byte-level Qwen2 tokenizer with no merges (every byte one token, as the CLIP one above), Qwen's
    chat markers and chat template, and `phrases` as whole tokens. Returns its vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: index for index, symbol in enumerate(sorted(_bytes_to_unicode().values()))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    marker = {"special": True, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
    added = {str(len(vocab) + i): {"content": token, **marker} for i, token in enumerate(specials)}
    for i, phrase in enumerate(dict.fromkeys(phrases)):  # a repeated phrase is one token
        added[str(len(vocab) + len(specials) + i)] = {"content": phrase, **marker, "special": False}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 512,
        "pad_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "added_tokens_decoder": added,
        "chat_template": QWEN_CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")

    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    expected = len(vocab) + len(specials) + len(set(phrases))
    if len(tokenizer) != expected:
        raise EngineError(f"the tiny Qwen tokenizer loaded with {len(tokenizer)} tokens, not {expected}")
    tokenizer.save_pretrained(str(folder))
    return len(tokenizer)


def build_tiny_zimage(out_dir: Path, *, seed: int = 0) -> Path:
    """A Z-Image-shaped pipeline: a single-stream DiT (noise and caption refiners, then joint layers),
    a two-layer Qwen3 text encoder with a byte-level tokenizer and Qwen's chat template, FLUX's 16-channel
    VAE layout and Z-Image's fixed-shift flow scheduler."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model

    out_dir = Path(out_dir)
    staging = _staging(out_dir)
    torch.manual_seed(seed)
    vocab_size = _write_qwen_tokenizer(staging / "tokenizer")
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=vocab_size - 3,
            eos_token_id=vocab_size - 1,
        )
    )
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=64,  # as wide as a 2x2 patch of 16-channel latents (see the tiny FLUX)
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=32,  # the Qwen3 encoder's width
        axes_dims=[8, 12, 12],  # sums to the head width, 64 / 2
        axes_lens=[1024, 64, 64],
    )
    vae = _flow_vae()
    pipeline = ZImagePipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=Qwen2Tokenizer.from_pretrained(str(staging / "tokenizer")),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    staging.rename(out_dir)
    return out_dir


def _write_qwen_template_tokenizer(folder: Path) -> int:
    """The byte-level Qwen tokenizer for Qwen-Image. Its pipeline cuts a fixed number of opening tokens
    (34: its template's system prompt in Qwen's real vocabulary) off every caption's encoding; byte by
    byte that prompt is about 180 tokens. So the system sentence is added as whole-word tokens, as many
    as make the template's opening exactly that long: what the transformer sees is then the caption's
    encoding, as with the real model."""
    from transformers import Qwen2Tokenizer

    from training.engine.families.qwenimage import prompt_template

    template, drop = prompt_template()
    opening = template.split("{}")[0]
    sentence = opening.split("system\n", 1)[1].split("<|im_end|>", 1)[0]
    _write_qwen_tokenizer(folder)
    fixed = len(Qwen2Tokenizer.from_pretrained(str(folder))(opening.replace(sentence, "")).input_ids)
    shutil.rmtree(folder)
    words = sentence.split(" ")
    if not 1 <= drop - fixed <= len(words):
        raise EngineError(f"the Qwen-Image template's system sentence cannot be made {drop - fixed} tokens")
    pieces = drop - fixed
    sizes = [len(words) // pieces + (1 if i < len(words) % pieces else 0) for i in range(pieces)]
    starts = [sum(sizes[:i]) for i in range(pieces)]
    chunks = [" ".join(words[start : start + size]) for start, size in zip(starts, sizes, strict=True)]
    size = _write_qwen_tokenizer(folder, (*(chunk + " " for chunk in chunks[:-1]), chunks[-1]))
    count = len(Qwen2Tokenizer.from_pretrained(str(folder))(opening).input_ids)
    if count != drop:
        raise EngineError(f"the tiny Qwen-Image tokenizer reads the template's opening as {count} tokens, not {drop}")
    return size


MOD_GAIN = 10.0  # the tiny Qwen-Image's modulation gain (see build_tiny_qwenimage)


def build_tiny_qwenimage(out_dir: Path, *, seed: int = 0) -> Path:
    """A Qwen-Image-shaped pipeline: a two-block double-stream MMDiT, a two-layer Qwen2.5-VL text encoder
    behind the byte-level Qwen2 tokenizer, a two-level Wan-style video VAE (downsampling by 4) whose
    per-channel `latents_mean`/`latents_std` are measured as the real ones were, and Qwen-Image's
    exponential resolution-dependent shift."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    out_dir = Path(out_dir)
    staging = _staging(out_dir)
    torch.manual_seed(seed)
    vocab_size = _write_qwen_template_tokenizer(staging / "tokenizer")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(staging / "tokenizer"))
    special = {
        token: int(tokenizer.convert_tokens_to_ids(token)) for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    }
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "max_position_embeddings": 2048,
        "bos_token_id": special["<|im_start|>"],
        "eos_token_id": special["<|im_end|>"],
        "pad_token_id": special["<|endoftext|>"],
    }
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 32}
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            # Vision markers the text-to-image prompts never contain; ids inside the vocabulary.
            vision_start_token_id=special["<|endoftext|>"],
            vision_end_token_id=special["<|endoftext|>"],
            image_token_id=special["<|endoftext|>"],
        )
    ).eval()
    vae: Any = AutoencoderKLQwenImage(
        base_dim=24, z_dim=16, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True]
    )
    with torch.no_grad():
        # A trained VAE's posterior is narrow; a random one's log-variance is about 0 (std 1), which after
        # the per-channel normalisation below would bury these small random latents (spread ~0.06) under
        # noise 16 times larger. The log-variance half of the last 1x1 convolution is set to a constant
        # -12 (std 0.0025, a small share of the latents' spread once that is scaled up below).
        vae.quant_conv.weight[16:] = 0.0
        vae.quant_conv.bias[16:] = -12.0
        # The real VAE's latents spread over units (its latents_std is 1.1-3.3), not hundredths: the mean
        # half is scaled up to match, so the random decoder sees inputs of the scale it is made for and
        # a change in the latents shows in the pixels.
        spread = float(vae.encode(_calibration_pixels().unsqueeze(2)).latent_dist.mean.std())
        vae.quant_conv.weight[:16] /= spread
        vae.quant_conv.bias[:16] /= spread
        latents = vae.encode(_calibration_pixels().unsqueeze(2)).latent_dist.mean
    vae.register_to_config(
        latents_mean=[round(float(v), 5) for v in latents.mean(dim=(0, 2, 3, 4))],
        latents_std=[round(float(v), 5) for v in latents.std(dim=(0, 2, 3, 4))],
    )
    transformer: Any = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,  # 4 x 16 = 64 wide, as a 2x2 patch of 16-channel latents
        num_attention_heads=4,
        joint_attention_dim=32,  # the text encoder's width
        axes_dims_rope=(4, 6, 6),
    )
    with torch.no_grad():
        # At this width the default initialisation leaves every block's gates (from the timestep, through
        # `img_mod`/`txt_mod`) so small that the blocks barely reach the output: a LoRA trained 8 steps
        # moved the generated pixels by 0.007 (of 255) on average, against 0.09 with gains 10 times
        # larger. A trained model's blocks matter; so do these.
        for name, module in transformer.named_modules():
            if name.endswith(("img_mod.1", "txt_mod.1")):
                module.weight.mul_(MOD_GAIN)
    pipeline = QwenImagePipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        # Qwen-Image's schedule: an exponential shift growing with the token count.
        scheduler=FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256,
            base_shift=0.5,
            max_image_seq_len=8192,
            max_shift=0.9,
            shift=1.0,
            shift_terminal=0.02,
            use_dynamic_shifting=True,
            time_shift_type="exponential",
        ),
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    staging.rename(out_dir)
    return out_dir


def _flux2_vae() -> Any:
    """FLUX.2's VAE, small: 32 latent channels, downsampling by 2, its BatchNorm statistics measured."""
    import torch
    from diffusers import AutoencoderKLFlux2

    from training.engine.families.flux2 import patchify

    vae: Any = AutoencoderKLFlux2(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=1,  # see _small_vae: colour must survive the encoder
        sample_size=64,
    )
    with torch.no_grad():
        # As for the tiny Qwen-Image: a trained VAE's posterior is narrow and its latents spread over
        # units; a random one's is neither (see build_tiny_qwenimage).
        vae.quant_conv.weight[32:] = 0.0
        vae.quant_conv.bias[32:] = -12.0
        spread = float(vae.encode(_calibration_pixels()).latent_dist.mean.std())
        vae.quant_conv.weight[:32] /= spread
        vae.quant_conv.bias[:32] /= spread
        # The BatchNorm statistics FLUX.2 normalises its patch tokens with: measured over images, as the
        # real VAE's running statistics were.
        patches = patchify(vae.encode(_calibration_pixels()).latent_dist.mean)
        vae.bn.running_mean.copy_(patches.mean(dim=(0, 2, 3)))
        vae.bn.running_var.copy_(patches.var(dim=(0, 2, 3)))
    return vae


def _flux2_transformer(text_width: int, *, guidance: bool) -> Any:
    """A one-double, one-single block FLUX.2 transformer over 128-channel patch tokens, reading three
    encoder depths of `text_width` side by side."""
    import torch
    from diffusers import Flux2Transformer2DModel

    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=128,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=32,  # 4 x 32 = 128 wide, as wide as a patch token (see the tiny FLUX)
        num_attention_heads=4,
        joint_attention_dim=3 * text_width,
        timestep_guidance_channels=32,
        mlp_ratio=3.0,
        axes_dims_rope=(8, 8, 8, 8),
        guidance_embeds=guidance,
    )
    with torch.no_grad():
        # As for the tiny Qwen-Image (see MOD_GAIN there): at this width the default initialisation leaves
        # the shared modulation's gates so small that the blocks barely reach the output (a different
        # caption moved the prediction by 0.4 %, 4 % with the gain).
        for name in ("double_stream_modulation_img", "double_stream_modulation_txt", "single_stream_modulation"):
            getattr(transformer, name).linear.weight.mul_(MOD_GAIN)
    return transformer


def _unit_scale_embeddings(model: Any) -> None:
    """FLUX.2 reads its encoder's intermediate hidden states unnormalised (a plain Linear, no norm, in front
    of the transformer). A trained LLM's residual stream runs at about unit scale; a random one at its
    embeddings' init scale (std 0.02). The embeddings are scaled up to unit scale."""
    import torch

    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings.mul_(1.0 / float(embeddings.std()))


def build_tiny_flux2_klein(out_dir: Path, *, seed: int = 0) -> Path:
    """A FLUX.2-klein-shaped pipeline: the tiny FLUX.2 transformer without a guidance embedding, a Qwen3
    causal LM deep enough for the pipeline's three caption depths (9, 18, 27) behind the byte-level Qwen
    tokenizer, the tiny FLUX.2 VAE and a FLUX-style flow scheduler."""
    import torch
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    staging = _staging(out_dir)
    torch.manual_seed(seed)
    vocab_size = _write_qwen_tokenizer(staging / "tokenizer")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(staging / "tokenizer"))
    width = 16
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=24,
            num_hidden_layers=28,  # hidden_states[27] is the deepest the pipeline reads
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=1024,
            pad_token_id=int(tokenizer.convert_tokens_to_ids("<|endoftext|>")),
            eos_token_id=int(tokenizer.convert_tokens_to_ids("<|im_end|>")),
        )
    ).eval()
    _unit_scale_embeddings(text_encoder)
    pipeline = Flux2KleinPipeline(
        transformer=_flux2_transformer(width, guidance=False),  # klein has no guidance embedding
        vae=_flux2_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_flux_scheduler(),
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    staging.rename(out_dir)
    return out_dir


# Mistral's chat layout (FLUX.2 dev's encoder): the system prompt and each user turn between markers.
# Messages carry lists of {"type": "text", "text": ...} parts, as Flux2Pipeline formats them.
MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{% else %}[INST]{% endif %}"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}"
    "{% if message['role'] == 'system' %}[/SYSTEM_PROMPT]{% else %}[/INST]{% endif %}"
    "{% endfor %}"
)


def build_tiny_flux2(out_dir: Path, *, seed: int = 0) -> Path:
    """A FLUX.2-dev-shaped pipeline: the tiny FLUX.2 transformer with a guidance embedding, read by a
    Mistral 3 (a small vision tower and a 31-layer text model, deep enough for the pipeline's depths 10,
    20 and 30) behind a byte-level tokenizer with Mistral's chat markers and template, and the tiny FLUX.2
    VAE. The real pipeline's tokenizer is a Pixtral processor, which needs torchvision; the pipeline only
    calls its `apply_chat_template`, which a tokenizer carrying the template answers the same way."""
    import torch
    from diffusers import Flux2Pipeline
    from transformers import (
        AutoTokenizer,
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
    )

    out_dir = Path(out_dir)
    staging = _staging(out_dir)
    torch.manual_seed(seed)
    markers = ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]", "[IMG]")
    _write_qwen_tokenizer(staging / "tokenizer", phrases=markers)
    config_path = staging / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = MISTRAL_CHAT_TEMPLATE
    config_path.write_text(json.dumps(config), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(staging / "tokenizer"))
    image_token: Any = tokenizer.convert_tokens_to_ids("[IMG]")  # one token: an int (typed int | list)
    width = 16
    text_encoder = Mistral3ForConditionalGeneration(
        Mistral3Config(
            text_config=MistralConfig(
                vocab_size=len(tokenizer),
                hidden_size=width,
                intermediate_size=24,
                num_hidden_layers=31,  # hidden_states[30] is the deepest the pipeline reads
                num_attention_heads=2,
                num_key_value_heads=2,
                head_dim=8,
                max_position_embeddings=1024,
                pad_token_id=int(tokenizer.pad_token_id),
            ),
            vision_config=PixtralVisionConfig(
                hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=64
            ),
            image_token_index=image_token,
        )
    ).eval()
    _unit_scale_embeddings(text_encoder)
    pipeline = Flux2Pipeline(
        transformer=_flux2_transformer(width, guidance=True),
        vae=_flux2_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_flux_scheduler(),
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    staging.rename(out_dir)
    return out_dir


def _write_llama_tokenizer(folder: Path) -> int:
    """A byte-level tokenizer in Llama 3's manner (every byte one token, as the CLIP one above): it opens
    every text with `<|begin_of_text|>` and ends a turn with `<|eot_id|>`, which HiDream's pipeline also
    pads with. Saved as a plain `PreTrainedTokenizerFast`, the class of the real one. Returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(_bytes_to_unicode().values()))}
    begin, end = "<|begin_of_text|>", "<|eot_id|>"
    vocab[begin], vocab[end] = len(vocab), len(vocab) + 1
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{begin} $A", pair=f"{begin} $A {begin} $B", special_tokens=[(begin, vocab[begin])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=begin, eos_token=end, model_max_length=MAX_LLAMA_TOKENS
    )
    tokenizer.add_special_tokens({"bos_token": begin, "eos_token": end})
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


MAX_LLAMA_TOKENS = 512


def build_tiny_hidream(out_dir: Path, *, seed: int = 0) -> Path:
    """A HiDream-I1-shaped pipeline: one double- and one single-stream block with mixture-of-experts
    feed-forwards (a shared expert, 2 of 4 routed), two CLIPs with projections reading 128 positions (as the
    pipeline pads them), T5, a four-layer Llama behind a byte-level tokenizer in Llama 3's manner whose
    layers 1 and 3 the two blocks read, FLUX's 16-channel VAE layout and HiDream-I1-Full's fixed shift."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, HiDreamImageTransformer2DModel
    from transformers import (
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        T5Tokenizer,
    )

    out_dir = Path(out_dir)
    staging = _staging(out_dir)
    torch.manual_seed(seed)
    clip_vocab = _write_clip_tokenizer(staging / "tokenizer")
    _write_clip_tokenizer(staging / "tokenizer_2")
    t5_vocab = _write_t5_tokenizer(staging / "tokenizer_3")
    llama_vocab = _write_llama_tokenizer(staging / "tokenizer_4")
    tokenizer_4 = PreTrainedTokenizerFast.from_pretrained(str(staging / "tokenizer_4"))
    width = 32
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=llama_vocab,
            hidden_size=width,
            intermediate_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=MAX_LLAMA_TOKENS,
            bos_token_id=int(tokenizer_4.bos_token_id),
            eos_token_id=int(tokenizer_4.eos_token_id),
            pad_token_id=int(tokenizer_4.eos_token_id),
        )
    ).eval()
    _unit_scale_embeddings(llama)  # the transformer reads its layers through a plain Linear (see FLUX.2)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,  # 4 x 16 = 64 wide, as a 2x2 patch of 16-channel latents
        num_attention_heads=4,
        caption_channels=[width, width],  # T5's, then Llama's
        text_emb_dim=64,  # both CLIPs' 32-wide projections side by side
        num_routed_experts=4,
        num_activated_experts=2,
        axes_dims_rope=(8, 4, 4),  # sums to the head width, as the real (64, 32, 32) to 128
        max_resolution=(64, 64),  # latent pixels: up to 128-pixel images over a VAE that downsamples by 2
        llama_layers=[1, 3],
    )
    pipeline = HiDreamImagePipeline(
        transformer=transformer,
        vae=_flow_vae(),
        text_encoder=CLIPTextModelWithProjection(_clip_config(clip_vocab, positions=128)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(clip_vocab, positions=128)),
        text_encoder_3=_tiny_t5(t5_vocab, width=width),
        text_encoder_4=llama,
        tokenizer=CLIPTokenizer.from_pretrained(str(staging / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(staging / "tokenizer_2")),
        tokenizer_3=T5Tokenizer.from_pretrained(str(staging / "tokenizer_3")),
        tokenizer_4=tokenizer_4,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
    )
    # diffusers' type-checking imports resolve its pipelines to dummy classes without save_pretrained.
    pipeline.save_pretrained(str(staging), safe_serialization=True)  # type: ignore[attr-defined]
    staging.rename(out_dir)
    return out_dir


def build_tiny_model(family: str, out_dir: Path, *, seed: int = 0) -> Path:
    if family == "sd15":
        return build_tiny_sd15(out_dir, seed=seed)
    if family == "sdxl":
        return build_tiny_sdxl(out_dir, seed=seed)
    if family in ("flux", "flux-kontext"):
        return build_tiny_flux(out_dir, seed=seed, kontext=family == "flux-kontext")
    if family == "sd3":
        return build_tiny_sd3(out_dir, seed=seed)
    if family == "chroma":
        return build_tiny_chroma(out_dir, seed=seed)
    if family == "zimage":
        return build_tiny_zimage(out_dir, seed=seed)
    if family == "qwenimage":
        return build_tiny_qwenimage(out_dir, seed=seed)
    if family == "flux2-klein":
        return build_tiny_flux2_klein(out_dir, seed=seed)
    if family == "flux2":
        return build_tiny_flux2(out_dir, seed=seed)
    if family == "hidream":
        return build_tiny_hidream(out_dir, seed=seed)
    raise EngineError(f"unknown family {family!r}; tiny models exist for: {', '.join(FAMILIES)}")


# Words the tiny captioner can say; the first five are BERT's special tokens, which it never says.
CAPTIONER_WORDS: tuple[str, ...] = (
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    *("a", "photo", "of", "red", "blue", "green", "circle", "square", "dog", "cat", "on", "the", "table"),
    *("in", "light", "dark"),
)


def build_tiny_captioner(out_dir: Path, *, seed: int = 0) -> Path:
    """A random-weight BLIP image captioner with a working word-level tokenizer, saved as a folder the
    `automatic` captioning strategy loads (TRAINING_CAPTION_MODEL). Its special tokens are never
    generated, so it always writes `max_new_tokens` words of its vocabulary."""
    import torch
    from transformers import (
        AutoTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        BlipTextConfig,
        BlipVisionConfig,
    )

    staging = _staging(out_dir)
    staging.mkdir(parents=True)
    (staging / "vocab.txt").write_text("\n".join(CAPTIONER_WORDS) + "\n", encoding="utf-8")
    (staging / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}),
        encoding="utf-8",
    )
    # Loaded back from its vocabulary before it is saved, as the CLIP tokenizers are (see above).
    tokenizer = AutoTokenizer.from_pretrained(str(staging))
    if len(tokenizer) != len(CAPTIONER_WORDS):
        raise EngineError(f"the tiny captioner's tokenizer loaded {len(tokenizer)} tokens, not {len(CAPTIONER_WORDS)}")
    vision = BlipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    text = BlipTextConfig(
        vocab_size=len(CAPTIONER_WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        encoder_hidden_size=32,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=2,
        sep_token_id=3,
        eos_token_id=3,
    )
    config = BlipConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=32, image_text_hidden_size=32
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[:5] = -1e4  # never a special token: always some words
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    model.save_pretrained(str(staging))
    processor.save_pretrained(str(staging))
    staging.rename(out_dir)
    return out_dir
