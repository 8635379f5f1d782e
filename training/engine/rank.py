"""The entry point of one rank of a distributed training: `torchrun ... -m training.engine.rank SPEC`.

The worker (training/launch.py) writes the spec, listens on a local socket and starts torchrun; each
rank runs `train()`. Rank 0 connects back and turns every engine callback into a message the worker
answers (its TaskReporter writes the database), then sends how the run ended: the result, or the
engine's exception (cancelled, suspended, a user error, a crash). No Django here.

Exit codes: 0 when the run ended as every rank agreed (finished, cancelled, suspended); 1 otherwise,
so that torchrun stops the other ranks (a user error found by rank 0 alone, a crash, a lost worker).
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from training.engine.errors import EngineError, TrainingCancelled, TrainingSuspended, WorkerGone
from training.engine.spec import Progress, SilentCallbacks, TrainingCallbacks

BRIDGE_ADDRESS = "TRAINING_BRIDGE_ADDRESS"  # host:port of the worker's listener
BRIDGE_KEY = "TRAINING_BRIDGE_KEY"  # hex authentication key (multiprocessing's HMAC handshake)
WORKER_PID = "TRAINING_WORKER_PID"  # the worker's process: the ranks end when it is gone
CALLBACKS = (
    "on_stage",
    "on_progress",
    "on_log",
    "on_sample",
    "on_checkpoint",
    "on_snapshot",
    "on_validation",
    "should_cancel",
    "should_suspend",
)


class BridgeCallbacks:
    """Rank 0's callbacks: each one a request to the worker and its answer."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def call(self, name: str, *args: Any) -> Any:
        try:
            self.connection.send(("call", name, args))
            kind, value = self.connection.recv()
        except (OSError, EOFError) as exc:
            raise WorkerGone(f"the worker is gone ({exc})") from exc
        if kind == "stop":
            raise WorkerGone(str(value))
        return value

    def on_stage(self, stage: str, processed: int, total: int) -> None:
        self.call("on_stage", stage, processed, total)

    def on_progress(self, progress: Progress) -> None:
        self.call("on_progress", progress)

    def on_log(self, message: str) -> None:
        self.call("on_log", message)

    def on_sample(self, step: int, prompt: str, path: Path) -> None:
        self.call("on_sample", step, prompt, path)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.call("on_checkpoint", step, path)

    def on_snapshot(self, step: int, path: Path) -> None:
        self.call("on_snapshot", step, path)

    def on_validation(self, step: int, loss: float) -> None:
        self.call("on_validation", step, loss)

    def should_cancel(self) -> bool:
        return bool(self.call("should_cancel"))

    def should_suspend(self) -> bool:
        return bool(self.call("should_suspend"))


def connect() -> Connection:
    host, port = os.environ[BRIDGE_ADDRESS].rsplit(":", 1)
    return Client((host, int(port)), authkey=bytes.fromhex(os.environ[BRIDGE_KEY]))


def watch_worker() -> None:
    """End this rank when the worker that launched the run is gone (killed, or exited at the end of its
    shutdown grace): torchrun then stops the other ranks. Without it, ranks busy loading, caching or
    sampling would run on for minutes with nobody to report to."""
    import threading
    import time

    worker = int(os.environ.get(WORKER_PID, "0"))
    if not worker:
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                continue  # alive, under another user

    threading.Thread(target=watch, name="watch-worker", daemon=True).start()


def main(spec_path: str) -> int:
    import signal

    from training.engine import train

    # The worker's shutdown signal (SIGUSR1) is the worker's business: it suspends the run through
    # rank 0's callbacks. A rank must not die of it.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    from training.engine.distributed import current_ranks

    ranks = current_ranks()
    watch_worker()
    spec = pickle.loads(Path(spec_path).read_bytes())  # written by this run's worker for it
    connection = connect() if ranks.main else None
    callbacks: TrainingCallbacks = BridgeCallbacks(connection) if connection is not None else SilentCallbacks()
    outcome: tuple[str, Any]
    code = 0
    try:
        outcome = ("result", train(spec, callbacks))
    except (TrainingCancelled, TrainingSuspended) as exc:
        outcome = ("raised", exc)
    except EngineError as exc:
        # Found by every rank (a bad setting) or by rank 0 alone (its loss check): rank 0 exits 1 so that
        # torchrun stops any rank still waiting in a collective; the others leave quietly.
        outcome, code = ("raised", exc), 1 if ranks.main else 0
    except WorkerGone:
        return 1
    except BaseException as exc:  # a crash: the worker fails (and may retry) the attempt with its message
        traceback.print_exc()
        outcome, code = ("crashed", (type(exc).__name__, str(exc))), 1
    if connection is not None:
        try:
            connection.send(("end", outcome))
            connection.close()
        except OSError:
            return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
