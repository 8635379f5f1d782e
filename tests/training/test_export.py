"""Export and loading of adapter files (LoRA, DoRA, LoKr, LoHa) without a training run: metadata, the
diffusers/PEFT <-> kohya/LyCORIS conversion, and loading LoKr/LoHa files back through PEFT."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from training.engine.export import (
    ADAPTER_CONFIG_KEY,
    KOHYA_WEIGHTS_NAME,
    LORA_WEIGHTS_NAME,
    add_metadata,
    base_model_label,
    from_kohya,
    load_adapter_file,
    lora_metadata,
    peft_config_json,
    read_metadata,
    to_kohya,
    write_kohya,
)

pytestmark = pytest.mark.engine  # no database: runs once, in the SQLite pass

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]  # Linear, 1x1 Conv2d, 3x3 Conv2d
RANK = 4
ALPHA = 8.0  # alpha / rank = 2: folding the scale into a LoKr factor and back is exact

CONFIGS = {
    "lora": lambda: LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=False),
    "dora": lambda: LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, init_lora_weights=False, use_dora=True
    ),
    # The tiny layers are small enough that PEFT keeps both Kronecker factors full...
    "lokr": lambda: LoKrConfig(r=RANK, alpha=ALPHA, target_modules=TARGETS, init_weights=False),
    # ...unless asked to decompose both, or (convolutions) to use a Tucker core.
    "lokr-decomposed": lambda: LoKrConfig(
        r=2, alpha=ALPHA, target_modules=TARGETS, init_weights=False, decompose_both=True
    ),
    "lokr-tucker": lambda: LoKrConfig(
        r=2, alpha=ALPHA, target_modules=TARGETS, init_weights=False, use_effective_conv2d=True
    ),
    "loha": lambda: LoHaConfig(r=RANK, alpha=ALPHA, target_modules=TARGETS, init_weights=False),
    "loha-tucker": lambda: LoHaConfig(
        r=RANK, alpha=ALPHA, target_modules=TARGETS, init_weights=False, use_effective_conv2d=True
    ),
}


def tiny_unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def adapted(kind: str, unet: torch.nn.Module | None = None) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A UNet with a randomly initialised adapter of `kind`, and its state dict as the exporter saves it."""
    torch.manual_seed(1)
    model = inject_adapter_in_model(CONFIGS[kind](), unet if unet is not None else tiny_unet())
    state = {f"unet.{key}": value.detach().clone() for key, value in get_peft_model_state_dict(model).items()}
    return model, state


def module_names(state: dict[str, torch.Tensor]) -> list[str]:
    names = set()
    for key in state:
        module = key.split(".", 1)[1]
        for suffix in (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"):
            module = module.removesuffix(suffix)
        names.add(module.rsplit(".", 1)[0] if ".lokr_" in key or ".hada_" in key else module)
    return sorted(names)


# --- Metadata ------------------------------------------------------------------------------------------


def test_base_model_label_keeps_hub_ids_and_reduces_local_paths_to_the_folder_name(tmp_path: Path) -> None:
    assert base_model_label("/srv/models/tiny-sd15") == "tiny-sd15"
    assert base_model_label("/srv/models/tiny-sd15/") == "tiny-sd15"
    assert base_model_label("~/models/my-model") == "my-model"
    assert base_model_label("/home/alice/ckpt/model.safetensors") == "model.safetensors"
    assert base_model_label("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"
    assert base_model_label("black-forest-labs/FLUX.1-dev") == "black-forest-labs/FLUX.1-dev"
    local = tmp_path / "owner" / "name"
    local.mkdir(parents=True)
    assert base_model_label(str(local)) == "name"


EXPECTED = {
    "sd15": ("sd_v1", "stable-diffusion-v1/lora"),
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    "flux": ("flux1", "flux-1-dev/lora"),
    "flux-kontext": ("flux1", "flux-1-kontext-dev/lora"),
    "sd3": ("sd3", "stable-diffusion-3/lora"),
    "chroma": ("chroma", "chroma/lora"),
    "zimage": ("zimage", "z-image/lora"),
    "qwenimage": ("qwen_image", "qwen-image/lora"),
    "qwenimage-edit": ("qwen_image_edit", "qwen-image-edit/lora"),
    "qwenimage21": ("qwen_image_21", "qwen-image-2.1/lora"),
    "flux2-klein": ("flux2", "flux-2-klein/lora"),
    "flux2": ("flux2", "flux-2-dev/lora"),
    "hidream": ("hidream", "hidream-i1/lora"),
}


def metadata_for(family: str = "sd15", lora_type: str = "lora", **overrides: object) -> dict[str, str]:
    values: dict = {
        "family": family,
        "base_model": "/srv/models/tiny-sd15",
        "trigger_word": "zxq",
        "training_type": "LORA",
        "lora_type": lora_type,
        "rank": 4,
        "alpha": 4.0,
        "steps": 8,
        "resolution": 512,
        "learning_rate": 1e-4,
        "dataset_hash": "0123456789abcdef",
    }
    values.update(overrides)
    return lora_metadata(**values)


@pytest.mark.parametrize("family", list(EXPECTED))
def test_metadata_has_our_keys_kohya_keys_and_modelspec_keys(family: str) -> None:
    metadata = metadata_for(family)
    assert all(isinstance(value, str) for value in metadata.values())
    assert {
        key: metadata[key]
        for key in (
            "base_model",
            "family",
            "trigger_word",
            "training_type",
            "lora_type",
            "rank",
            "alpha",
            "steps",
            "resolution",
            "learning_rate",
            "dataset_hash",
        )
    } == {
        "base_model": "tiny-sd15",
        "family": family,
        "trigger_word": "zxq",
        "training_type": "LORA",
        "lora_type": "lora",
        "rank": "4",
        "alpha": "4.0",
        "steps": "8",
        "resolution": "512",
        "learning_rate": "0.0001",
        "dataset_hash": "0123456789abcdef",
    }
    version, architecture = EXPECTED[family]
    assert metadata["ss_base_model_version"] == version
    assert metadata["ss_network_module"] == "networks.lora"
    assert "ss_network_args" not in metadata
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("4", "4.0")
    assert metadata["ss_sd_model_name"] == "tiny-sd15"
    assert metadata["ss_resolution"] == "(512, 512)"
    assert (metadata["ss_max_train_steps"], metadata["ss_learning_rate"]) == ("8", "0.0001")
    assert metadata["ss_output_name"] and "zxq" in metadata["ss_training_comment"]
    assert metadata["modelspec.sai_model_spec"] == "1.0.1"
    assert metadata["modelspec.architecture"] == architecture
    assert metadata["modelspec.implementation"] == "diffusers"
    assert metadata["modelspec.title"] == "zxq LoRA"
    assert metadata["modelspec.resolution"] == "512x512"
    assert metadata["modelspec.trigger_phrase"] == "zxq"
    datetime.fromisoformat(metadata["modelspec.date"])
    assert not any("/srv/" in value for value in metadata.values())


@pytest.mark.parametrize(
    ("lora_type", "module", "args"),
    [
        ("dora", "lycoris.kohya", {"algo": "lora", "dora_wd": "True", "wd_on_output": "True"}),
        ("lokr", "lycoris.kohya", {"algo": "lokr", "factor": "-1"}),
        ("loha", "lycoris.kohya", {"algo": "loha"}),
    ],
)
def test_metadata_names_the_lycoris_network_of_each_other_adapter_kind(
    lora_type: str, module: str, args: dict[str, str]
) -> None:
    kind = lora_type.split("-")[0]
    config = {"dora": CONFIGS["dora"], "lokr": CONFIGS["lokr"], "loha": CONFIGS["loha"]}[kind]()
    metadata = metadata_for("flux", lora_type, extra={ADAPTER_CONFIG_KEY: peft_config_json(config)})
    assert metadata["ss_network_module"] == module
    assert json.loads(metadata["ss_network_args"]) == args
    assert metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert json.loads(metadata[ADAPTER_CONFIG_KEY])["peft_type"] == config.peft_type.value


def test_full_training_metadata_has_no_network_keys() -> None:
    metadata = metadata_for("sdxl", training_type="FULL", extra={"note": "x"})
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert not any(key.startswith("ss_network") for key in metadata)
    assert metadata["note"] == "x"


# --- kohya / LyCORIS conversion --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_to_kohya_and_back_is_the_identity_for_every_adapter_kind(kind: str) -> None:
    model, state = adapted(kind)
    rank = model.peft_config["default"].r
    kohya = to_kohya(state, alpha=ALPHA, rank=rank)
    assert all(key.startswith("lora_unet_") for key in kohya)
    modules = module_names(state)
    assert {key.split(".", 1)[0] for key in kohya} == {"lora_unet_" + name.replace(".", "_") for name in modules}
    assert {float(value) for key, value in kohya.items() if key.endswith(".alpha")} == {ALPHA}
    restored = from_kohya(kohya, modules, "unet", rank=rank)
    assert restored.keys() == state.keys()
    assert all(torch.equal(restored[key], state[key]) for key in state)


def test_kohya_names_per_kind() -> None:
    lokr = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"}
    loha = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"}
    expected = {  # kind: (names every module has, names a module may have)
        "lora": ({"lora_down.weight", "lora_up.weight", "alpha"}, set()),
        "dora": ({"lora_down.weight", "lora_up.weight", "dora_scale", "alpha"}, set()),
        "lokr": ({"alpha"}, lokr),
        "lokr-decomposed": ({"alpha"}, lokr),
        "lokr-tucker": ({"alpha"}, lokr),
        "loha": ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}, set()),
        "loha-tucker": ({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}, loha),
    }
    for kind, (required, allowed) in expected.items():
        model, state = adapted(kind)
        kohya = to_kohya(state, alpha=ALPHA, rank=model.peft_config["default"].r)
        by_module: dict[str, set[str]] = {}
        for key in kohya:
            name, suffix = key.split(".", 1)
            by_module.setdefault(name, set()).add(suffix)
        for name, suffixes in by_module.items():
            assert required <= suffixes <= (allowed or required), (kind, name, suffixes)
    assert any(key.endswith(".lokr_w1_a") for key in to_kohya(adapted("lokr-decomposed")[1], alpha=ALPHA))
    # Tucker cores on the 3x3 convolutions.
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lokr_t2" in to_kohya(adapted("lokr-tucker")[1], alpha=ALPHA)
    assert "lora_unet_down_blocks_0_resnets_0_conv1.hada_t1" in to_kohya(adapted("loha-tucker")[1], alpha=ALPHA)


def test_dora_scale_has_the_output_axis_first_as_comfyui_expects() -> None:
    model, state = adapted("dora")
    kohya = to_kohya(state, alpha=ALPHA)
    modules = dict(model.named_modules())
    for key, tensor in kohya.items():
        if not key.endswith(".dora_scale"):
            continue
        name = next(n for n in module_names(state) if "lora_unet_" + n.replace(".", "_") == key.split(".")[0])
        weight = modules[name].get_base_layer().weight
        # LyCORIS' wd_on_output layout: (out, 1) for a Linear, (out, 1, 1, 1) for a Conv2d; ComfyUI's
        # weight_decompose takes dora_scale.shape[0] == out as "decomposed on the output axis".
        assert tensor.shape == (weight.shape[0], *[1] * (weight.dim() - 1)), key
        # PEFT's magnitude, per output row: the row norms of W + scale * B @ A at initialisation.
        merged = weight + modules[name].get_delta_weight("default")
        assert torch.allclose(tensor.flatten(), merged.flatten(start_dim=1).norm(dim=1), atol=1e-4), key


def comfyui_delta(kohya: dict[str, torch.Tensor], name: str, shape: torch.Size) -> torch.Tensor:
    """ComfyUI's weight_adapter arithmetic (lora.py, lokr.py, loha.py), restated: the patch it adds."""
    parts = {key.split(".", 1)[1]: value for key, value in kohya.items() if key.split(".", 1)[0] == name}
    alpha = float(parts["alpha"])
    if "lora_up.weight" in parts:
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        return (alpha / down.shape[0]) * (up.flatten(start_dim=1) @ down.flatten(start_dim=1)).reshape(shape)
    if "hada_w1_a" in parts:
        w1a, w1b, w2a, w2b = (parts[f"hada_w{i}_{s}"] for i, s in ((1, "a"), (1, "b"), (2, "a"), (2, "b")))
        if "hada_t1" in parts:
            m1 = torch.einsum("i j k l, j r, i p -> p r k l", parts["hada_t1"], w1b, w1a)
            m2 = torch.einsum("i j k l, j r, i p -> p r k l", parts["hada_t2"], w2b, w2a)
        else:
            m1, m2 = w1a @ w1b, w2a @ w2b
        return (alpha / w1b.shape[0]) * (m1 * m2).reshape(shape)
    dim = None
    if "lokr_w1" in parts:
        w1 = parts["lokr_w1"]
    else:
        dim, w1 = parts["lokr_w1_b"].shape[0], parts["lokr_w1_a"] @ parts["lokr_w1_b"]
    if "lokr_w2" in parts:
        w2 = parts["lokr_w2"]
    elif "lokr_t2" in parts:
        dim = parts["lokr_w2_b"].shape[0]
        w2 = torch.einsum("i j k l, j r, i p -> p r k l", parts["lokr_t2"], parts["lokr_w2_b"], parts["lokr_w2_a"])
    else:
        dim, w2 = parts["lokr_w2_b"].shape[0], parts["lokr_w2_a"] @ parts["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    w2 = w2.contiguous()  # torch.kron refuses the einsum's strided result (PEFT makes it contiguous too)
    scale = alpha / dim if dim is not None else 1.0
    return scale * torch.kron(w1, w2).reshape(shape)


@pytest.mark.parametrize("kind", ["lora", "lokr", "lokr-decomposed", "lokr-tucker", "loha", "loha-tucker"])
def test_the_kohya_file_patches_each_weight_as_peft_does_under_comfyui_arithmetic(kind: str) -> None:
    model, state = adapted(kind)
    kohya = to_kohya(state, alpha=ALPHA, rank=model.peft_config["default"].r)
    modules = dict(model.named_modules())
    for name in module_names(state):
        layer = modules[name]
        expected = layer.get_delta_weight("default")
        got = comfyui_delta(kohya, "lora_unet_" + name.replace(".", "_"), layer.get_base_layer().weight.shape)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), name


def test_a_full_factor_lokr_needs_the_rank_to_export_and_to_import() -> None:
    _, state = adapted("lokr")
    with pytest.raises(ValueError, match="rank"):
        to_kohya(state, alpha=ALPHA)
    kohya = to_kohya(state, alpha=ALPHA, rank=RANK)
    with pytest.raises(ValueError, match="rank"):
        from_kohya(kohya, module_names(state), "unet")


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="unexpected adapter key"):
        to_kohya({"vae.encoder.conv_in.lora_A.weight": torch.zeros(1)}, alpha=1.0)
    with pytest.raises(ValueError, match="no known module"):
        from_kohya({"lora_unet_nowhere.lora_down.weight": torch.zeros(1)}, ["conv_in"], "unet")


# --- Loading adapter files into a pipeline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.engine.testing import build_tiny_model

    root = tmp_path_factory.mktemp("export-bases")
    return {family: build_tiny_model(family, root / family) for family in ("sd15", "flux")}


def denoiser_output(denoiser: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if hasattr(denoiser, "time_text_embed"):  # FLUX: 16 image tokens of 64 channels, 5 text tokens
            return denoiser(
                hidden_states=torch.randn(1, 16, 64, generator=generator),
                encoder_hidden_states=torch.randn(1, 5, 32, generator=generator),
                pooled_projections=torch.randn(1, 32, generator=generator),
                timestep=torch.tensor([0.5]),
                img_ids=torch.zeros(16, 3),
                txt_ids=torch.zeros(5, 3),
                guidance=torch.tensor([1.0]),
            ).sample
        sample = torch.randn(1, 4, 16, 16, generator=generator)
        context = torch.randn(1, 7, 32, generator=generator)
        return denoiser(sample, 10, encoder_hidden_states=context).sample


FLUX_TARGETS = ["to_q", "to_k", "to_v", "proj_mlp"]
LOADED = {
    # LoKr/LoHa through PEFT (diffusers cannot load them); r=4 keeps LoKr's factors full (scale folded).
    ("sd15", "loha"): lambda: CONFIGS["loha"](),
    ("sd15", "lokr"): lambda: CONFIGS["lokr"](),
    ("flux", "loha"): lambda: LoHaConfig(r=RANK, alpha=ALPHA, target_modules=FLUX_TARGETS, init_weights=False),
    # LoRA/DoRA through diffusers; FLUX kohya files (`lora_transformer_` names) converted by us first.
    ("flux", "lora"): lambda: LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=FLUX_TARGETS, init_lora_weights=False
    ),
    ("flux", "dora"): lambda: LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=FLUX_TARGETS, init_lora_weights=False, use_dora=True
    ),
}


@pytest.mark.parametrize(("family", "kind"), list(LOADED))
def test_an_exported_file_of_either_layout_loads_and_matches_the_adapted_denoiser(
    family: str, kind: str, tiny_bases: dict[str, Path], tmp_path: Path
) -> None:
    from diffusers import FluxPipeline, FluxTransformer2DModel, StableDiffusionPipeline, UNet2DConditionModel

    from training.engine.generate import load_pipeline

    base = tiny_bases[family]
    component = "unet" if family == "sd15" else "transformer"
    model_class = UNet2DConditionModel if family == "sd15" else FluxTransformer2DModel
    torch.manual_seed(1)
    config = LOADED[family, kind]()
    model = inject_adapter_in_model(config, model_class.from_pretrained(str(base), subfolder=component).eval())
    expected = denoiser_output(model)
    # As the trainer exports it: PEFT's state dict through the family's diffusers save_lora_weights (for
    # LoKr/LoHa too: it only prefixes the keys), then our metadata with the PEFT config under ADAPTER_CONFIG_KEY.
    out = tmp_path / "out"
    layers = get_peft_model_state_dict(model)
    config_json = peft_config_json(config)
    if family == "sd15":
        StableDiffusionPipeline.save_lora_weights(
            str(out),
            unet_lora_layers=layers,
            weight_name=LORA_WEIGHTS_NAME,
            unet_lora_adapter_metadata=json.loads(config_json),
        )
    else:
        FluxPipeline.save_lora_weights(
            str(out),
            transformer_lora_layers=layers,
            weight_name=LORA_WEIGHTS_NAME,
            transformer_lora_adapter_metadata=json.loads(config_json),
        )
    path = out / LORA_WEIGHTS_NAME
    assert load_file(str(path)).keys() == {f"{component}.{key}" for key in layers}
    metadata = metadata_for(
        family, kind, base_model=str(base), rank=RANK, alpha=ALPHA, extra={ADAPTER_CONFIG_KEY: config_json}
    )
    add_metadata(path, {**metadata, "layout": "diffusers"})
    kohya_path = write_kohya(path, out / KOHYA_WEIGHTS_NAME, alpha=ALPHA, metadata=metadata)
    assert read_metadata(kohya_path)["layout"] == "kohya"

    for adapter_file in (path, kohya_path):
        pipeline = load_pipeline(str(base), device=torch.device("cpu"))
        denoiser = getattr(pipeline, component)
        plain = denoiser_output(denoiser)
        assert load_adapter_file(pipeline, adapter_file) == kind
        tuned = denoiser_output(denoiser)
        assert (tuned - plain).abs().mean() > 1e-4, adapter_file.name  # the adapter changed the output...
        assert torch.allclose(tuned, expected, atol=1e-5), adapter_file.name  # ...exactly as in memory


def test_a_missing_file_is_an_engine_error(tmp_path: Path) -> None:
    from training.engine.errors import EngineError

    with pytest.raises(EngineError, match="does not exist"):
        load_adapter_file(object(), tmp_path / "nothing.safetensors")
