"""One training on several processes (one per GPU, or CPU processes with gloo), through torch.distributed.

The worker launches the ranks with `torchrun` (training/launch.py); each rank runs the same `train()`.
What differs between ranks lives here:

- the global batch (`batch_size` images per micro-batch, `gradient_accumulation` micro-batches per
  step) is the task's, whatever the rank count: every rank draws the whole step's images, noise and
  timesteps from the same seeded generators and trains on its share (`Share`), so a run on two ranks
  reaches the weights of a run on one, up to the order of floating-point sums;
- LoRA (and every adapter) trains data-parallel: torch's composable DDP (`replicate`) averages the
  adapters' gradients after each backward; the frozen base is never broadcast (every rank loaded it);
- FULL fine-tuning is sharded with FSDP2 (`fully_shard`, block by block, then the root): each rank
  holds 1/N of the weights, gradients and AdamW state, so a model larger than one card trains;
- rank 0 alone reports (progress, checkpoints, samples) and writes files; decisions that depend on
  the clock or on the database (cancel, suspend, the time-based snapshot) are rank 0's, broadcast
  so every rank takes the same branch;
- checkpoints hold full tensors in the single-process format (gathered from the shards), so a run
  resumes on any rank count and the exported weights are the usual file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from contract.parameters import global_batch_problem
from training.engine.errors import EngineError
from training.engine.spec import Progress, TrainingCallbacks

# Rank 0 may cache a large dataset while the others wait at a barrier: a long ceiling, not a timing.
GROUP_TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank, world size and the local device index."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Ranks()


def current_ranks() -> Ranks:
    """From the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Ranks(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shards_model(ranks: Ranks, training_type: str) -> bool:
    """Whether the denoiser is sharded over the ranks (FULL on several), rather than replicated or whole."""
    return ranks.active and training_type != "LORA"


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """Each rank's own GPU (its local rank's); CPU ranks share the host."""
    if device.type == "cuda" and ranks.active:
        return torch.device("cuda", ranks.local_rank)
    return device


def join(ranks: Ranks, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo between CPU processes."""
    import torch.distributed as dist

    if not ranks.active or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=GROUP_TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )


def leave(ranks: Ranks) -> None:
    import torch.distributed as dist

    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()


def from_main(ranks: Ranks, value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object)."""
    if not ranks.active:
        return value
    import torch.distributed as dist

    box = [value if ranks.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_ranks(ranks: Ranks, value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (the step's loss over the whole global batch)."""
    if not ranks.active:
        return value
    import torch.distributed as dist

    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ranks.world


# --- the global batch's share ----------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """Which rows of which micro-batch this rank trains on. Either each micro-batch's rows are split
    (batch_size a multiple of the rank count) or whole micro-batches are dealt out in turn
    (gradient_accumulation a multiple of it): every rank runs the same number of forwards, which
    FSDP's per-forward gathers need."""

    ranks: Ranks
    batch_size: int
    accumulation: int

    @classmethod
    def of(cls, ranks: Ranks, batch_size: int, accumulation: int) -> Share:
        check_global_batch(ranks.world, batch_size, accumulation)
        return cls(ranks=ranks, batch_size=batch_size, accumulation=max(1, accumulation))

    @property
    def split_rows(self) -> bool:
        return self.batch_size % self.ranks.world == 0

    def rows(self, micro: int) -> slice | None:
        """This rank's rows of micro-batch `micro`; None when the micro-batch is another rank's."""
        world, rank = self.ranks.world, self.ranks.rank
        if self.split_rows:
            size = self.batch_size // world
            return slice(rank * size, (rank + 1) * size)
        return slice(0, self.batch_size) if micro % world == rank else None

    def weight(self, rows: slice) -> float:
        """The weight of a micro-batch's mean loss in this rank's step loss: its share of the rank's
        images, so that the ranks' (averaged) gradients are those of the global batch's mean loss."""
        per_rank = self.batch_size * self.accumulation / self.ranks.world
        return (rows.stop - rows.start) / per_rank


def check_global_batch(world: int, batch_size: int, accumulation: int) -> None:
    """contract.parameters' rule for splitting a task's global batch over `world` ranks (the API checks it too)."""
    problem = global_batch_problem(world, batch_size, accumulation)
    if problem:
        raise EngineError(problem)


def take_rows(value: Any, rows: slice) -> Any:
    """A batch-like value (tensor, dict of tensors, dataclass of them) cut to `rows` along the first axis."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[rows] if value.dim() else value
    if isinstance(value, dict):
        return {key: take_rows(item, rows) for key, item in value.items()}
    if isinstance(value, list):
        return [take_rows(item, rows) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: take_rows(getattr(value, f.name), rows) for f in dataclasses.fields(value)}
        )
    return value


# --- parallel models -------------------------------------------------------------------------------


def replicate_trainable(module: torch.nn.Module, ranks: Ranks) -> None:
    """Data-parallel training of a module whose trainable part is small (adapters): gradients averaged
    over the ranks after each backward (torch's composable DDP, in place, so the module keeps its class
    and attributes for the family code). No initial broadcast: every rank loaded the same base and
    initialised the adapters from the same seed; frozen weights are never communicated."""
    if not ranks.active:
        return
    from torch.distributed._composable.replicate import replicate

    device = next((p.device for p in module.parameters() if p.requires_grad), torch.device("cpu"))
    replicate(
        module,
        device_ids=[device.index] if device.type == "cuda" else None,
        init_sync=False,
        broadcast_buffers=False,
        # Some blocks' adapters take no part in a forward (a family's last block without a context
        # branch, say): DDP must not wait for their gradients.
        find_unused_parameters=True,
    )


def shard_module(
    module: torch.nn.Module, blocks: Iterable[torch.nn.Module], device: torch.device, ranks: Ranks
) -> None:
    """FSDP2: each repeated block sharded on its own (gathered for its forward and backward only),
    then the rest of the module. Parameters become DTensors holding 1/world of each weight."""
    if not ranks.active:
        return
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (ranks.world,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from its shards when sharded (a collective: every rank calls it)."""
    if is_sharded(tensor):
        return tensor.full_tensor()  # type: ignore[attr-defined]  # DTensor's
    return tensor


def full_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor whole, on the host (on every rank; rank 0 writes them)."""
    return {name: full_tensor(tensor.detach()).cpu() for name, tensor in tensors.items()}


def like(parameter: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out as `parameter` is: sharded the same way when it is sharded."""
    if is_sharded(parameter):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(
            value.to(parameter.device, parameter.dtype),
            parameter.device_mesh,  # type: ignore[attr-defined]
            parameter.placements,  # type: ignore[attr-defined]
        )
    return value.to(parameter.device, parameter.dtype)


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict with every sharded state gathered: the single-process format."""
    state = optimizer.state_dict()
    return {
        **state,
        "state": {
            index: {
                key: full_tensor(value).cpu() if isinstance(value, torch.Tensor) else value for key, value in s.items()
            }
            for index, s in state["state"].items()
        },
    }


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a single-process optimizer state, sharding each per-parameter tensor as its parameter is."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(is_sharded(p) for p in parameters):
        optimizer.load_state_dict(state)
        return
    sharded: dict[int, dict[str, Any]] = {}
    for index, values in state["state"].items():
        parameter = parameters[int(index)]
        sharded[index] = {
            key: like(parameter, value)
            if isinstance(value, torch.Tensor) and value.dim() and value.shape == parameter.shape
            else value
            for key, value in values.items()
        }
    optimizer.load_state_dict({**state, "state": sharded})


# --- callbacks -------------------------------------------------------------------------------------


class RankCallbacks:
    """The engine's callbacks on one rank: rank 0 reports through the worker's callbacks; every other
    rank is silent. Cancel and suspend are asked of rank 0 and its answer is broadcast, so every rank
    leaves the loop at the same step."""

    def __init__(self, callbacks: TrainingCallbacks, ranks: Ranks) -> None:
        self.callbacks = callbacks
        self.ranks = ranks

    def on_stage(self, stage: str, processed: int, total: int) -> None:
        if self.ranks.main:
            self.callbacks.on_stage(stage, processed, total)

    def on_progress(self, progress: Progress) -> None:
        if self.ranks.main:
            self.callbacks.on_progress(progress)

    def on_log(self, message: str) -> None:
        if self.ranks.main:
            self.callbacks.on_log(message)

    def on_sample(self, step: int, prompt: str, path: Any) -> None:
        if self.ranks.main:
            self.callbacks.on_sample(step, prompt, path)

    def on_checkpoint(self, step: int, path: Any) -> None:
        if self.ranks.main:
            self.callbacks.on_checkpoint(step, path)

    def on_snapshot(self, step: int, path: Any) -> None:
        if self.ranks.main:
            self.callbacks.on_snapshot(step, path)

    def on_validation(self, step: int, loss: float) -> None:
        if self.ranks.main:
            self.callbacks.on_validation(step, loss)

    def should_cancel(self) -> bool:
        return bool(from_main(self.ranks, self.callbacks.should_cancel() if self.ranks.main else None))

    def should_suspend(self) -> bool:
        return bool(from_main(self.ranks, self.callbacks.should_suspend() if self.ranks.main else None))
