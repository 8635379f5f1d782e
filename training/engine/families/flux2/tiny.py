"""Tiny FLUX.2 klein and dev models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.engine.testing import FLOW_LOSS_DROP, LearningRun, TinyModel
from training.engine.testing.models import (
    MOD_GAIN,
    calibration_pixels,
    flux_scheduler,
    save_pipeline,
    staging_folder,
    unit_scale_embeddings,
)
from training.engine.testing.tokenizers import write_qwen_tokenizer


def flux2_vae() -> Any:
    """FLUX.2's VAE, small: 32 latent channels, downsampling by 2, its BatchNorm statistics measured."""
    import torch
    from diffusers import AutoencoderKLFlux2

    from training.engine.families.flux2.family import patchify

    vae: Any = AutoencoderKLFlux2(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=1,  # see small_vae: colour must survive the encoder
        sample_size=64,
    )
    with torch.no_grad():
        # As for the tiny Qwen-Image: a trained VAE's posterior is narrow and its latents spread over
        # units; a random one's is neither (see build_tiny_qwenimage).
        vae.quant_conv.weight[32:] = 0.0
        vae.quant_conv.bias[32:] = -12.0
        spread = float(vae.encode(calibration_pixels()).latent_dist.mean.std())
        vae.quant_conv.weight[:32] /= spread
        vae.quant_conv.bias[:32] /= spread
        # The BatchNorm statistics FLUX.2 normalises its patch tokens with: measured over images, as the
        # real VAE's running statistics were.
        patches = patchify(vae.encode(calibration_pixels()).latent_dist.mean)
        vae.bn.running_mean.copy_(patches.mean(dim=(0, 2, 3)))
        vae.bn.running_var.copy_(patches.var(dim=(0, 2, 3)))
    return vae


def flux2_transformer(text_width: int, *, guidance: bool) -> Any:
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


def build_tiny_flux2_klein(out_dir: Path, *, seed: int = 0) -> Path:
    """A FLUX.2-klein-shaped pipeline: the tiny FLUX.2 transformer without a guidance embedding, a Qwen3
    causal LM deep enough for the pipeline's three caption depths (9, 18, 27) behind the byte-level Qwen
    tokenizer, the tiny FLUX.2 VAE and a FLUX-style flow scheduler."""
    import torch
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    vocab_size = write_qwen_tokenizer(staging / "tokenizer")
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
    unit_scale_embeddings(text_encoder)
    pipeline = Flux2KleinPipeline(
        transformer=flux2_transformer(width, guidance=False),  # klein has no guidance embedding
        vae=flux2_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=flux_scheduler(),
    )
    return save_pipeline(pipeline, staging, out_dir)


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
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    markers = ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]", "[IMG]")
    write_qwen_tokenizer(staging / "tokenizer", phrases=markers)
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
    unit_scale_embeddings(text_encoder)
    pipeline = Flux2Pipeline(
        transformer=flux2_transformer(width, guidance=True),
        vae=flux2_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=flux_scheduler(),
    )
    return save_pipeline(pipeline, staging, out_dir)


TINY_MODELS = {
    # No trigger-word runs: the transformer reads the caption only through attention over 512 unmasked
    # positions, which the tiny random model spreads nearly evenly (tests/training/test_learning.py).
    "flux2-klein": TinyModel(
        build=build_tiny_flux2_klein,
        learning=LearningRun(steps=150, learning_rate=2e-3, loss_drop=FLOW_LOSS_DROP),
        edit=LearningRun(steps=200, learning_rate=2e-3, loss_drop=FLOW_LOSS_DROP),
    ),
    # The pipeline generates at guidance 4.0; the tiny model's random guidance embedding needs training there.
    "flux2": TinyModel(
        build=build_tiny_flux2,
        learning=LearningRun(steps=150, learning_rate=2e-3, options={"guidance_scale": 4.0}, loss_drop=FLOW_LOSS_DROP),
        edit=LearningRun(steps=200, learning_rate=2e-3, options={"guidance_scale": 4.0}, loss_drop=FLOW_LOSS_DROP),
    ),
}
