"""A tiny image captioner for the `automatic` captioning strategy's tests and demos."""

from __future__ import annotations

import json
from pathlib import Path

from training.engine.errors import EngineError
from training.engine.testing.models import staging_folder

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

    staging = staging_folder(out_dir)
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
