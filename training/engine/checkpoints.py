"""Checkpoints: the trained weights, optimizer and schedule state, step and RNG, written atomically.

Each checkpoint is a folder `step-0000500/`, written as `step-0000500.partial/` and renamed when
complete, so a crash mid-write never leaves a checkpoint that looks valid. The newest
`max_step_saves_to_keep` are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FILES = ("weights.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")


def save_checkpoint(
    directory: Path,
    *,
    step: int,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    fingerprint: str,
    keep: int,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:07d}"
    partial = directory / f"step-{step:07d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}, partial / FILES[0])
    torch.save(optimizer.state_dict(), partial / FILES[1])
    torch.save(scheduler.state_dict(), partial / FILES[2])
    rng = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, partial / FILES[3])
    (partial / FILES[4]).write_text(json.dumps({"step": step, "fingerprint": fingerprint}), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob("step-*") if p.is_dir() and not p.name.endswith(".partial")]
    return sorted(found, key=lambda p: p.name)


def latest_valid_checkpoint(directory: Path, fingerprint: str) -> tuple[Path, int] | None:
    """The newest checkpoint that is complete, readable and made from the same run configuration."""
    for candidate in reversed(list_checkpoints(directory)):
        if not all((candidate / name).is_file() for name in FILES):
            continue
        try:
            state = json.loads((candidate / FILES[4]).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if state.get("fingerprint") == fingerprint and isinstance(state.get("step"), int):
            return candidate, state["step"]
    return None


def load_checkpoint(
    path: Path,
    *,
    parameters: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> None:
    weights = load_file(path / FILES[0])
    missing = set(parameters) - set(weights)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} trained tensors")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(weights[name].to(parameter.device, parameter.dtype))
    optimizer.load_state_dict(torch.load(path / FILES[1], weights_only=True))
    scheduler.load_state_dict(torch.load(path / FILES[2], weights_only=False))
    rng = torch.load(path / FILES[3], weights_only=False)
    generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
