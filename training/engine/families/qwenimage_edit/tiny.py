"""A tiny Qwen-Image-Edit (2511) model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.engine.testing import FLOW_LOSS_DROP, LearningRun, TinyModel
from training.engine.testing.models import MOD_GAIN, save_pipeline, staging_folder
from training.engine.testing.tokenizers import QWEN_VISION_TOKENS


def build_tiny_qwenimage_edit(out_dir: Path, *, seed: int = 0) -> Path:
    """A QwenImageEditPlusPipeline-shaped model: Qwen-Image's tiny parts (two-block MMDiT, two-level Wan-style
    VAE) with 2511's `zero_cond_t`, a two-layer Qwen2.5-VL whose one-layer vision tower reads images through the
    real Qwen2-VL image processor (Pillow backend, the published pixel limits), and the byte-level Qwen tokenizer
    with Qwen-VL's image markers, its edit template's opening exactly the 64 tokens the pipeline cuts. The
    processor is saved under the stock Qwen2VLProcessor's name."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from training.engine.families.qwenimage.tiny import tiny_qwen_vae, write_qwen_template_tokenizer
    from training.engine.families.qwenimage_edit.family import edit_template
    from training.engine.vl_processors import Qwen2VLProcessorWithoutVideo, stock_names

    out_dir = Path(out_dir)
    staging = staging_folder(out_dir)
    torch.manual_seed(seed)
    vocab_size = write_qwen_template_tokenizer(staging / "tokenizer", edit_template(), vision=True)
    tokenizer = Qwen2Tokenizer.from_pretrained(str(staging / "tokenizer"))
    ids = {
        token: int(tokenizer.convert_tokens_to_ids(token))
        for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *QWEN_VISION_TOKENS)
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
        "max_position_embeddings": 4096,
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 32}
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
        )
    ).eval()
    transformer: Any = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
        zero_cond_t=True,  # 2511: the reference tokens modulated as at time 0
    )
    with torch.no_grad():
        for name, module in transformer.named_modules():  # as Qwen-Image's tiny model (its tiny.py says why)
            if name.endswith(("img_mod.1", "txt_mod.1")):
                module.weight.mul_(MOD_GAIN)
    # Qwen2.5-VL's published pixel limits (56x56 to 12.8 MP, 14 px patches merged 2x2).
    processor = Qwen2VLProcessorWithoutVideo(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 16384), tokenizer=tokenizer
    )
    pipeline = QwenImageEditPlusPipeline(
        transformer=transformer,
        vae=tiny_qwen_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
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
    return save_pipeline(pipeline, staging, out_dir, finish=stock_names)


TINY_MODELS = {
    # It learns only edits: its learning run is an edit run. No trigger-word run (a text-to-image measure).
    "qwenimage-edit": TinyModel(
        build=build_tiny_qwenimage_edit,
        learning=LearningRun(steps=150, learning_rate=2e-3, loss_drop=FLOW_LOSS_DROP),
    ),
}
