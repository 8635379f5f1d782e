"""Tokenizers for the tiny test models, written locally: byte-level (every byte one token, so distinct words
get distinct ids) in the manner of each family's real tokenizer (CLIP, T5, Qwen, Llama 3).

Each is loaded back from its files before it is saved, and checked: transformers 5 can save a tokenizer
built from arguments in a form that loads back with a near-empty vocabulary (docs: NOTES.md)."""

from __future__ import annotations

import json
from pathlib import Path

from training.engine.errors import EngineError


def bytes_to_unicode() -> dict[int, str]:
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


def write_clip_tokenizer(folder: Path) -> int:
    """A byte-level CLIP tokenizer with no merges: every byte is one token, so distinct words get
    distinct ids. Returns its vocab size.

    It is loaded back from `vocab.json`/`merges.txt` before it is saved: a `CLIPTokenizer` built with
    file-path arguments under transformers 5 keeps a two-entry vocabulary and would save that as its
    `tokenizer.json`, mapping every prompt to the same ids."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = sorted(bytes_to_unicode().values())
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


def write_t5_tokenizer(folder: Path) -> int:
    """A unigram T5 tokenizer whose pieces are single characters (and their word-start forms)."""
    from transformers import T5Tokenizer

    characters = [chr(c) for c in range(32, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + c, -1.0) for c in characters] + [(c, -2.0) for c in characters]
    tokenizer = T5Tokenizer(vocab=vocab, unk_id=2, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


# Qwen's chat format, which ZImagePipeline wraps every prompt in (apply_chat_template).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Qwen-VL's image markers, special tokens of the real vocabulary (its processor widens each <|image_pad|>).
QWEN_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def write_qwen_tokenizer(folder: Path, phrases: tuple[str, ...] = (), *, vision: bool = False) -> int:
    """A byte-level Qwen2 tokenizer with no merges (every byte one token, as the CLIP one above), Qwen's
    chat markers and chat template (and, with `vision`, Qwen-VL's image markers), and `phrases` as whole
    tokens. Returns its vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: index for index, symbol in enumerate(sorted(bytes_to_unicode().values()))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(QWEN_VISION_TOKENS if vision else ())]
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


MAX_LLAMA_TOKENS = 512


def write_llama_tokenizer(folder: Path) -> int:
    """A byte-level tokenizer in Llama 3's manner (every byte one token, as the CLIP one above): it opens
    every text with `<|begin_of_text|>` and ends a turn with `<|eot_id|>`, which HiDream's pipeline also
    pads with. Saved as a plain `PreTrainedTokenizerFast`, the class of the real one. Returns its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(bytes_to_unicode().values()))}
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
