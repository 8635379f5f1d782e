"""HiDream-I1 (Full, Dev, Fast): a 17 B rectified-flow transformer with sparse mixture-of-experts
feed-forwards (a shared expert plus 2 of 4 routed ones per token), 16 double-stream blocks then 32
single-stream ones over 2x2 patches of FLUX's 16-channel latents.

Its conditioning is what `HiDreamImagePipeline.encode_prompt` builds from four text encoders:
- the pooled vector: CLIP-L's and CLIP-G's projected outputs side by side;
- T5-XXL's last hidden states (128 tokens, masked inside the encoder, all 128 fed);
- Llama 3.1 8B Instruct's hidden states after every layer (128 tokens, padded with its end token); each
  block reads one layer of them (`llama_layers` in the transformer's config), added to the shared caption
  tokens as that block's own.
Only the Llama layers the transformer reads are cached, batch first; `predict` hands them back in the
layer-indexed form the transformer takes.

The transformer patches the latents itself, takes its timestep in the scheduler's units (sigma x 1000) and
predicts `latents - noise`: the pipeline negates it, and so does `predict`. While the model is in training
mode it returns its output in a patch layout (`unpatchify` with `is_training`), turned back into an image
here. The schedule has a fixed shift (3.0 for Full and Fast, 6.0 for Dev), read from the scheduler's
config (`shift`, or `flow_shift` for a UniPC scheduler)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.engine.errors import EngineError
from training.engine.families.base import NoisedBatch, NoiseSettings
from training.engine.families.flow import FlowFamily

if TYPE_CHECKING:
    from PIL import Image

# The attention projections of HiDream's blocks: the image stream's (all blocks) and the caption
# stream's (`_t`, double blocks only).
HIDREAM_ATTENTION = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out",
    "attn1.to_q_t",
    "attn1.to_k_t",
    "attn1.to_v_t",
    "attn1.to_out_t",
)


class HiDreamFamily(FlowFamily):
    name = "hidream"
    transformer_class = "HiDreamImageTransformer2DModel"
    pipeline_class = "HiDreamImagePipeline"
    block_prefixes = ("double_stream_blocks", "single_stream_blocks")
    lora_targets_attention = HIDREAM_ATTENTION
    # Every SwiGLU of the feed-forwards (the shared and routed experts of the image stream, the caption
    # stream's plain one) and each block's modulation. The router (`gate.weight`) is a bare parameter.
    lora_targets_linear = ("w1", "w2", "w3", "adaLN_modulation.1")
    routed_experts = True
    caption_tokenizer = "tokenizer_4"  # Llama; T5 and both CLIPs read the same 128 tokens
    max_sequence_length = 128  # the pipeline's default, for all four encoders
    tokenizer_classes = {
        "tokenizer": "CLIPTokenizer",
        "tokenizer_2": "CLIPTokenizer",
        "tokenizer_3": "T5Tokenizer",
        "tokenizer_4": "AutoTokenizer",
    }
    text_encoder_classes = {
        "text_encoder": "CLIPTextModelWithProjection",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "text_encoder_3": "T5EncoderModel",
        # The decoder stack alone: the pipeline's LlamaForCausalLM gives the same hidden states, and its
        # language-model head (1 GB) is never used.
        "text_encoder_4": "LlamaModel",
    }

    def __init__(self, base_model: str, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(base_model, device, weight_dtype)
        self.patch_size = int(self.transformer_config.get("patch_size", 2))
        self.llama_layers = [int(layer) for layer in self.transformer_config["llama_layers"]]
        self.cached_layers = sorted(set(self.llama_layers))
        side = self.transformer_config.get("max_resolution", (128, 128))
        self.max_tokens = int(side[0]) * int(side[1]) // (self.patch_size * self.patch_size)

    def timestep_shift(self, settings: NoiseSettings, latent_height: int, latent_width: int) -> float:
        """The user's value, or the scheduler's fixed shift: `shift` (flow-matching Euler) or `flow_shift`
        (UniPC with flow sigmas). The pipeline's token-count `mu` only acts on a scheduler with dynamic
        shifting, which no HiDream model uses."""
        if settings.timestep_shift is not None:
            return float(settings.timestep_shift)
        config = self.scheduler_config
        if config.get("use_flow_sigmas") and config.get("flow_shift") is not None:
            return float(config["flow_shift"])
        return super().timestep_shift(settings, latent_height, latent_width)

    def check_components(self) -> None:
        folder = Path(self.base_model)
        if folder.is_dir() and not (folder / "text_encoder_4").is_dir():
            raise EngineError(
                f"base model {self.base_model!r} has no text_encoder_4: HiDream reads the caption with Llama 3.1 "
                "8B Instruct, which its repository does not include; download meta-llama/Llama-3.1-8B-Instruct "
                "into the folder's text_encoder_4 and tokenizer_4"
            )

    def load_encoders(self) -> None:
        super().load_encoders()
        self.tokenizer_4.pad_token = self.tokenizer_4.eos_token  # as the pipeline sets it

    def place_text_encoders(self, encoders: dict[str, torch.nn.Module]) -> None:
        """Left in host memory; each runs on the device in turn while encoding, unless all four fit there
        at once (together 27 GB in bf16, more than a 24 GB card holds)."""
        self.encoders_resident = self.encoders_fit_on_device(encoders)
        for encoder in encoders.values():
            encoder.eval()
            if self.encoders_resident:
                encoder.to(self.device)

    def encoders_fit_on_device(self, encoders: dict[str, torch.nn.Module]) -> bool:
        """Whether all four text encoders fit on the device together, with a quarter of its free memory
        left over for their activations."""
        if self.device.type != "cuda":
            return True
        size = sum(
            parameter.numel() * parameter.element_size()
            for encoder in encoders.values()
            for parameter in encoder.parameters()
        )
        free, _total = torch.cuda.mem_get_info(self.device)
        return size < 0.75 * free

    def run_encoder(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a text encoder on the device: brought there for the call (and sent back to the host
        after it) when the encoders do not all fit."""
        encoder = getattr(self, name)
        if self.encoders_resident:
            return encoder(*args, **kwargs)
        encoder.to(self.device)
        try:
            return encoder(*args, **kwargs)
        finally:
            encoder.to("cpu")
            torch.cuda.empty_cache()

    @classmethod
    def prepare_generation(
        cls, pipeline: Any, arguments: dict[str, Any], image: Image.Image | list[Image.Image] | None
    ) -> None:
        """HiDreamImagePipeline scales every request to the area of its `default_sample_size` latent pixels
        squared (1024 x 1024 for the real models), keeping the aspect ratio; that size is set to the area
        asked for, rounded up so that the pipeline's rounding down to whole patches keeps the width and height."""
        area = arguments["width"] * arguments["height"]
        pipeline.default_sample_size = math.ceil(math.sqrt(area) / pipeline.vae_scale_factor)

    @staticmethod
    def padded(tokenizer: Any, prompts: list[str], length: int) -> Any:
        """The prompts' tokens padded (and cut) to `length`, as the pipeline tokenizes them for each encoder."""
        return tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        width = self.max_sequence_length
        pooled = []
        for tokenizer, encoder in ((self.tokenizer, "text_encoder"), (self.tokenizer_2, "text_encoder_2")):
            ids = self.padded(tokenizer, prompts, width).input_ids  # the pipeline's CLIP length ignores the tokenizer's
            pooled.append(self.run_encoder(encoder, ids.to(self.device))[0])  # the projected pooled output
        t5 = self.padded(self.tokenizer_3, prompts, min(width, self.tokenizer_3.model_max_length))
        t5_embeds = self.run_encoder(
            "text_encoder_3", t5.input_ids.to(self.device), attention_mask=t5.attention_mask.to(self.device)
        )[0]
        llama = self.padded(self.tokenizer_4, prompts, min(width, self.tokenizer_4.model_max_length))
        hidden = self.run_encoder(
            "text_encoder_4",
            llama.input_ids.to(self.device),
            attention_mask=llama.attention_mask.to(self.device),
            output_hidden_states=True,
        ).hidden_states[1:]  # after each layer, as the pipeline stacks them
        if max(self.llama_layers) >= len(hidden):
            raise EngineError(
                f"the transformer reads Llama layer {max(self.llama_layers)}, but text_encoder_4 has {len(hidden)}"
            )
        # Kept in the training precision: 32 layers x 128 tokens x 4096 is 32 MB a caption in bf16.
        store = self.weight_dtype
        return {
            "pooled_prompt_embeds": torch.cat(pooled, dim=-1).float().cpu(),
            "t5_embeds": t5_embeds.to(store).cpu(),
            "llama_embeds": torch.stack([hidden[layer] for layer in self.cached_layers], dim=1).to(store).cpu(),
        }

    def llama_states(self, cached: torch.Tensor) -> list[torch.Tensor | None]:
        """The cached (B, layers, tokens, width) Llama states as the transformer indexes them, by encoder
        layer (`encoder_hidden_states_llama3[k]` for each k of `llama_layers`); layers it never reads are None."""
        states: list[torch.Tensor | None] = [None] * (max(self.llama_layers) + 1)
        for position, layer in enumerate(self.cached_layers):
            states[layer] = cached[:, position]
        return states

    def predict(
        self,
        denoiser: torch.nn.Module,
        batch: NoisedBatch,
        conditioning: dict[str, torch.Tensor],
        settings: NoiseSettings,
        *,
        source_latents: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        size, channels, height, width = batch.noisy.shape
        patch = self.patch_size
        tokens = (height // patch) * (width // patch)
        if height != width and tokens > self.max_tokens:
            # The transformer pads a non-square image's tokens to a fixed count and cannot take more.
            raise EngineError(
                f"a {width * self.vae_scale()}x{height * self.vae_scale()} image is {tokens} tokens; this HiDream "
                f"model takes at most {self.max_tokens} for a non-square image: lower the resolution"
            )
        steps = float(self.scheduler_config.get("num_train_timesteps", 1000))
        dtype = self.weight_dtype
        output = denoiser(
            hidden_states=batch.noisy.to(dtype),
            timesteps=(batch.timesteps * steps).to(dtype),
            encoder_hidden_states_t5=conditioning["t5_embeds"].to(self.device, dtype),
            encoder_hidden_states_llama3=self.llama_states(conditioning["llama_embeds"].to(self.device, dtype)),
            pooled_embeds=conditioning["pooled_prompt_embeds"].to(self.device, dtype),
            return_dict=False,
        )[0]
        if denoiser.training and not self.transformer_config.get("force_inference_output"):
            # (B, C, tokens, patch * patch), tokens row by row (padded to the maximum for a non-square
            # image), each token's values row by row within its patch.
            rows, columns = height // patch, width // patch
            output = (
                output[:, :, :tokens]
                .reshape(size, channels, rows, columns, patch, patch)
                .permute(0, 1, 2, 4, 3, 5)
                .reshape(size, channels, height, width)
            )
        return -output
