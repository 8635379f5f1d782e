"""A tiny HiDream-I1 model."""

from __future__ import annotations

from pathlib import Path

from training.engine.testing import LearningRun, TinyModel
from training.engine.testing.models import (
    clip_config,
    flow_vae,
    save_pipeline,
    staging_folder,
    tiny_t5,
    unit_scale_embeddings,
)
from training.engine.testing.tokenizers import (
    MAX_LLAMA_TOKENS,
    write_clip_tokenizer,
    write_llama_tokenizer,
    write_t5_tokenizer,
)


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
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    clip_vocab = write_clip_tokenizer(staging / "tokenizer")
    write_clip_tokenizer(staging / "tokenizer_2")
    t5_vocab = write_t5_tokenizer(staging / "tokenizer_3")
    llama_vocab = write_llama_tokenizer(staging / "tokenizer_4")
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
    unit_scale_embeddings(llama)  # the transformer reads its layers through a plain Linear (see FLUX.2)
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
        vae=flow_vae(),
        text_encoder=CLIPTextModelWithProjection(clip_config(clip_vocab, positions=128)),
        text_encoder_2=CLIPTextModelWithProjection(clip_config(clip_vocab, positions=128)),
        text_encoder_3=tiny_t5(t5_vocab, width=width),
        text_encoder_4=llama,
        tokenizer=CLIPTokenizer.from_pretrained(str(staging / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(staging / "tokenizer_2")),
        tokenizer_3=T5Tokenizer.from_pretrained(str(staging / "tokenizer_3")),
        tokenizer_4=tokenizer_4,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
    )
    return save_pipeline(pipeline, staging, out_dir)


TINY_MODELS = {
    "hidream": TinyModel(
        build=build_tiny_hidream,
        learning=LearningRun(steps=150, learning_rate=2e-3),
        trigger=LearningRun(steps=150, learning_rate=2e-3),
    ),
}
