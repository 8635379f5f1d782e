"""Checkpoints: the trained weights, optimizer and schedule state, step and RNG, written atomically.

Two kinds share one folder and one format:
- the user's checkpoints, `step-0000500/`, every `save_every` steps; the newest
  `max_step_saves_to_keep` are kept;
- the worker's crash-safety snapshots, `snapshot-0000500/`, on a time and step cadence whatever
  `save_every` says; only the newest is kept.
Each is written as `<name>.partial/` and renamed when complete, so a crash mid-write never leaves a
checkpoint that looks valid. A run resumes from the highest step of either kind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from training.engine.distributed import like, load_optimizer_state

FILES = ("weights.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
EMA_FILE = "ema.safetensors"  # present when the run keeps an EMA of its weights
KINDS = ("step", "snapshot")


def save_checkpoint(
    directory: Path,
    *,
    step: int,
    weights: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    fingerprint: str,
    optimizer_state: dict[str, Any] | None = None,
    keep: int,
    kind: str = "step",
    ema: Mapping[str, torch.Tensor] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{kind}-{step:07d}"
    partial = directory / f"{kind}-{step:07d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in weights.items()}, partial / FILES[0])
    # A sharded run passes its state gathered whole (distributed.optimizer_state): one format for all.
    torch.save(optimizer_state if optimizer_state is not None else optimizer.state_dict(), partial / FILES[1])
    torch.save(scheduler.state_dict(), partial / FILES[2])
    rng: dict[str, torch.Tensor | list[torch.Tensor]] = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, partial / FILES[3])
    if ema is not None:
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in ema.items()}, partial / EMA_FILE)
    body = {"step": step, "fingerprint": fingerprint, "kind": kind, **(state or {})}
    (partial / FILES[4]).write_text(json.dumps(body), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in list_checkpoints(directory, kind=kind)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def list_checkpoints(directory: Path, *, kind: str | None = "step") -> list[Path]:
    """Complete checkpoint folders of one kind (or of every kind with kind=None), oldest first."""
    if not directory.is_dir():
        return []
    kinds = KINDS if kind is None else (kind,)
    found = [
        p
        for p in directory.iterdir()
        if p.is_dir() and not p.name.endswith(".partial") and p.name.split("-", 1)[0] in kinds
    ]
    return sorted(found, key=lambda p: (checkpoint_step(p), p.name))


def latest_valid_checkpoint(directory: Path, fingerprint: str) -> tuple[Path, int] | None:
    """The newest checkpoint or snapshot that is complete, readable and made from the same run
    configuration."""
    for candidate in reversed(list_checkpoints(directory, kind=None)):
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
) -> dict[str, Any]:
    """Restore the training state; returns the checkpoint's state.json, with the EMA weights (if any)
    under "ema"."""
    weights = load_file(path / FILES[0])
    missing = set(parameters) - set(weights)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} trained tensors")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(like(parameter, weights[name]))
    load_optimizer_state(optimizer, torch.load(path / FILES[1], weights_only=True))
    scheduler.load_state_dict(torch.load(path / FILES[2], weights_only=False))
    rng = torch.load(path / FILES[3], weights_only=False)
    generator.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state: dict[str, Any] = json.loads((path / FILES[4]).read_text(encoding="utf-8"))
    if (path / EMA_FILE).is_file():
        state["ema"] = load_file(path / EMA_FILE)
    return state
