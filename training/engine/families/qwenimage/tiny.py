"""A tiny Qwen-Image model."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

from training.engine.errors import EngineError
from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import MOD_GAIN, calibration_pixels, save_pipeline, staging_folder
from training.engine.testing.tokenizers import write_qwen_tokenizer


def write_qwen_template_tokenizer(
    folder: Path, template_and_drop: tuple[str, int] | None = None, *, vision: bool = False
) -> int:
    """The byte-level Qwen tokenizer for Qwen-Image (or, given its template, a pipeline built like it). Its
    pipeline cuts a fixed number of opening tokens (34: its template's system prompt in Qwen's real
    vocabulary) off every caption's encoding; byte by byte that prompt is about 180 tokens. So the system
    sentence is added as whole-word tokens, as many as make the template's opening exactly that long: what
    the transformer sees is then the caption's encoding, as with the real model."""
    from transformers import Qwen2Tokenizer

    from training.engine.families.qwenimage.family import prompt_template

    template, drop = template_and_drop or prompt_template()
    opening = template.split("{}")[0]
    sentence = opening.split("system\n", 1)[1].split("<|im_end|>", 1)[0]
    write_qwen_tokenizer(folder, vision=vision)
    fixed = len(Qwen2Tokenizer.from_pretrained(str(folder))(opening.replace(sentence, "")).input_ids)
    shutil.rmtree(folder)
    words = sentence.split(" ")
    pieces = drop - fixed
    if not 1 <= pieces <= len(sentence):
        raise EngineError(f"the Qwen-Image template's system sentence cannot be made {pieces} tokens")
    if pieces <= len(words):  # whole words
        sizes = [len(words) // pieces + (1 if i < len(words) % pieces else 0) for i in range(pieces)]
        starts = [sum(sizes[:i]) for i in range(pieces)]
        chunks = [" ".join(words[start : start + size]) for start, size in zip(starts, sizes, strict=True)]
        phrases = (*(chunk + " " for chunk in chunks[:-1]), chunks[-1])
    else:  # more tokens than words (the edit template's): spans of about equal length
        bounds = [round(i * len(sentence) / pieces) for i in range(pieces + 1)]
        phrases = tuple(sentence[start:end] for start, end in itertools.pairwise(bounds))
    size = write_qwen_tokenizer(folder, phrases, vision=vision)
    count = len(Qwen2Tokenizer.from_pretrained(str(folder))(opening).input_ids)
    if count != drop:
        raise EngineError(f"the tiny Qwen-Image tokenizer reads the template's opening as {count} tokens, not {drop}")
    return size


def tiny_qwen_vae() -> Any:
    """Qwen-Image's VAE (Wan 2.1's video VAE), small: two levels (downsampling by 4), its posterior narrowed and
    its latents spread as a trained one's, with per-channel `latents_mean`/`latents_std` measured as the real
    ones were."""
    import torch
    from diffusers import AutoencoderKLQwenImage

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
        spread = float(vae.encode(calibration_pixels().unsqueeze(2)).latent_dist.mean.std())
        vae.quant_conv.weight[:16] /= spread
        vae.quant_conv.bias[:16] /= spread
        latents = vae.encode(calibration_pixels().unsqueeze(2)).latent_dist.mean
    vae.register_to_config(
        latents_mean=[round(float(v), 5) for v in latents.mean(dim=(0, 2, 3, 4))],
        latents_std=[round(float(v), 5) for v in latents.std(dim=(0, 2, 3, 4))],
    )
    return vae


def build_tiny_qwenimage(out_dir: Path, *, seed: int = 0) -> Path:
    """A Qwen-Image-shaped pipeline: a two-block double-stream MMDiT, a two-layer Qwen2.5-VL text encoder
    behind the byte-level Qwen2 tokenizer, a two-level Wan-style video VAE (downsampling by 4) whose
    per-channel `latents_mean`/`latents_std` are measured as the real ones were, and Qwen-Image's
    exponential resolution-dependent shift."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    vocab_size = write_qwen_template_tokenizer(staging / "tokenizer")
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
    vae = tiny_qwen_vae()
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
    return save_pipeline(pipeline, staging, out_dir)


TINY_MODELS = {
    # No trigger-word run: the tiny transformer is nearly blind to its caption at random init (random text
    # moves its prediction by about 1 %); real Qwen-Image reads captions closely.
    "qwenimage": TinyModel(build=build_tiny_qwenimage, learning=LearningRun(steps=150, learning_rate=2e-3)),
}
