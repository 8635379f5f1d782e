"""Run one training on several GPUs of this machine: the worker launches the engine's ranks with
torchrun as a child process group and serves rank 0's callbacks, so progress, checkpoints, samples,
cancel and suspend go through the worker's TaskReporter exactly as in a single-process run.

The run ends in the worker as it would have in-process: `train_on_ranks` returns the engine's result
or raises the engine's exception (TrainingCancelled, TrainingSuspended, EngineError), an exception a
callback raised here (LeaseLost), or `RanksFailed` when a rank died (killed, out of memory, a crash):
torchrun then stops the others and the runner fails or re-queues the attempt as for a lost worker.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from training import engine
from training.engine.rank import BRIDGE_ADDRESS, BRIDGE_KEY, CALLBACKS, WORKER_PID

logger = logging.getLogger(__name__)

# How long torchrun's ranks get to start and connect (imports, process group) before the launch is
# declared failed, and to exit once the run has ended: ceilings against a hang, not timings.
CONNECT_SECONDS = 600.0
EXIT_SECONDS = 120.0
POLL_SECONDS = 0.2
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where `-m training.engine.rank` is found


class RanksFailed(RuntimeError):
    """A rank of a distributed run died or the group could not start. `out_of_memory` when its
    output says so (the runner then reports it as such)."""

    def __init__(self, message: str, *, out_of_memory: bool = False) -> None:
        super().__init__(message)
        self.out_of_memory = out_of_memory


def visible_devices(devices: list[int], worker_visible: str | None) -> str:
    """CUDA_VISIBLE_DEVICES for the ranks: the held indices, which count within the worker's own
    visible devices when it has a list (a worker given "4,5,6,7" holding 0 and 1 means GPUs 4 and 5)."""
    if worker_visible:
        own = [entry.strip() for entry in worker_visible.split(",") if entry.strip()]
        return ",".join(own[index] for index in devices)
    return ",".join(str(index) for index in devices)


def torchrun_command(spec_path: Path, processes: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a rendezvous on this machine, on a free port
        f"--nproc-per-node={processes}",
        "--max-restarts=0",  # a failed rank fails the attempt; the runner decides about retrying
        "-m",
        "training.engine.rank",
        str(spec_path),
    ]


def train_on_ranks(
    spec: engine.TrainingSpec,
    callbacks: engine.TrainingCallbacks,
    *,
    processes: int,
    devices: list[int] | None = None,
    work_dir: Path,
) -> engine.TrainingResult:
    """Train `spec` on `processes` ranks (GPUs `devices` of this machine; CPU processes when the
    spec's device is the CPU), serving rank 0's callbacks with `callbacks` until the run ends."""
    folder = work_dir / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.pickle"
    spec_path.write_bytes(pickle.dumps(spec))
    key = secrets.token_bytes(32)
    with Listener(("127.0.0.1", 0), authkey=key) as listener:
        host, port = listener.address
        env = {**os.environ, BRIDGE_ADDRESS: f"{host}:{port}", BRIDGE_KEY: key.hex(), WORKER_PID: str(os.getpid())}
        if devices is not None and (spec.device or "cuda").startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = visible_devices(devices, os.environ.get("CUDA_VISIBLE_DEVICES"))
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        log_path = folder / "ranks.log"
        with open(log_path, "wb") as log:  # this attempt's output only: its root cause is read from it
            # Its own session: the worker stops the whole group (torchrun and its ranks) with one signal.
            process = subprocess.Popen(
                torchrun_command(spec_path, processes),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=PROJECT_ROOT,
            )
            try:
                return Bridge(listener, process, callbacks, log_path).serve()
            finally:
                stop_group(process)


class Bridge:
    """The worker's end of rank 0's connection: each callback message answered, the end recorded."""

    def __init__(
        self, listener: Listener, process: subprocess.Popen[bytes], callbacks: engine.TrainingCallbacks, log: Path
    ) -> None:
        self.listener = listener
        self.process = process
        self.callbacks = callbacks
        self.log = log
        self.failure: BaseException | None = None  # raised by a callback here: re-raised when the run ends
        self.end: tuple[str, Any] | None = None

    def serve(self) -> engine.TrainingResult:
        connection = self.accept()
        if connection is None:
            stop_group(self.process)
            self.process.wait()
            return self.outcome(self.process.returncode)
        with connection:
            self.answer(connection)
        try:
            code = self.process.wait(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:  # a rank stuck after the end (in a collective, say): stopped
            stop_group(self.process)
            code = self.process.wait()
        return self.outcome(code)

    def accept(self) -> Connection | None:
        """Rank 0's connection, or None when the group died (or never connected) first."""
        accepted: list[Connection] = []

        def accept_rank_0() -> None:
            while not accepted:
                try:
                    accepted.append(self.listener.accept())
                except AuthenticationError:
                    continue  # a stray local connection without the key: keep waiting for rank 0
                except OSError:
                    return  # the listener was closed

        thread = threading.Thread(target=accept_rank_0, daemon=True)
        thread.start()
        deadline = time.monotonic() + CONNECT_SECONDS
        while not accepted:
            thread.join(POLL_SECONDS)
            if not accepted and (self.process.poll() is not None or time.monotonic() > deadline):
                return None
        return accepted[0]

    def answer(self, connection: Connection) -> None:
        while True:
            try:
                if not connection.poll(POLL_SECONDS):
                    if self.process.poll() is not None and not connection.poll(0):
                        return  # the group is gone and nothing it sent is left unread
                    continue
                message = connection.recv()
            except (EOFError, OSError):
                return  # rank 0 is gone; its exit code says how
            if message[0] == "end":
                self.end = message[1]
                return
            _, name, args = message
            if name not in CALLBACKS:
                connection.send(("stop", f"unknown callback {name!r}"))
                continue
            try:
                value = getattr(self.callbacks, name)(*args)
            except Exception as exc:  # the lease was lost, the database unreachable: the run must stop
                self.failure = exc
                connection.send(("stop", f"{type(exc).__name__}: {exc}"))
                return
            connection.send(("ok", value))

    def outcome(self, code: int) -> engine.TrainingResult:
        if self.failure is not None:
            raise self.failure
        if self.end is not None:
            kind, value = self.end
            if kind == "result":
                return value
            if kind == "raised":
                raise value
            name, message = value
            cause = root_cause(self.log)
            raise RanksFailed(
                f"rank 0 crashed: {name}: {message}" + (f" ({cause})" if "Root Cause" in cause else ""),
                out_of_memory=is_oom_text(message) or self.log_says_oom(),
            )
        tail = root_cause(self.log)
        raise RanksFailed(
            f"a training process exited with code {code} before the run ended: {tail}",
            out_of_memory=self.log_says_oom(),
        )

    def log_says_oom(self) -> bool:
        """Whether any rank of this attempt ran out of memory (its traceback is in the group's log)."""
        try:
            return is_oom_text(self.log.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return False


def is_oom_text(text: str) -> bool:
    return "out of memory" in text.lower()


def root_cause(path: Path, lines: int = 6) -> str:
    """Why the group failed, from torchrun's report (its "Root Cause" section: the first rank that
    failed, its exit code or signal), else the last lines the ranks wrote."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    report = text.rpartition("Root Cause")
    if report[1]:
        fields = {}
        for line in report[2].splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("rank", "exitcode", "traceback") and key.strip() not in fields:
                fields[key.strip()] = " ".join(value.split())
        if fields:
            return "Root Cause: " + ", ".join(f"{key} {value}" for key, value in fields.items())
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def stop_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop torchrun and every rank (its session), politely then for good."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
