"""`manage.py demo` as `make demo` runs it: a real qcluster, the tiny base model, SQLite. It shows what the
training learned, reuses its team, key and model on a rerun, and never strands work when it gives up."""

from __future__ import annotations

import io
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from PIL import Image

from models_app.models import ApiKey, Model, Team, TrainingTask
from tests.helpers import wait_for, worker_environment
from tests.test_docs import bodies, section

HANG_GUARD = 120  # seconds: only ever reached when something hangs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture(autouse=True)
def demo_environment(settings, monkeypatch: pytest.MonkeyPatch, tiny_sd15: Path) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the demo runs on the embedded defaults (SQLite); once is enough")
    # The demo starts its worker with this process's environment: point it at the test's data.
    for name, value in worker_environment(settings).items():
        monkeypatch.setenv(name, value)


def run_demo(*arguments: str) -> str:
    out = io.StringIO()
    call_command("demo", *arguments, stdout=out)
    return out.getvalue()


def no_cluster_left() -> bool:
    for process in psutil.Process().children(recursive=True):
        try:
            if "qcluster" in " ".join(process.cmdline()):
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def reported(output: str) -> tuple[re.Match[str], re.Match[str]]:
    held_out = re.search(
        r"held-out loss \(images it never trained on\): ([\d.]+) at the start, lowest ([\d.]+) at step (\d+)", output
    )
    match = re.search(
        r"generations of (\d+) training captions vs their images: distance ([\d.]+) without the LoRA, ([\d.]+) with "
        r"it \((\d+)% (nearer|further: worse, not better)\)",
        output,
    )
    assert held_out is not None and match is not None, output
    return held_out, match


def test_the_demo_shows_what_it_learned_and_a_rerun_reuses_its_team_key_and_model(settings) -> None:
    first = run_demo("--steps", "40", "--timeout", "300")
    held_out, match = reported(first)
    assert float(held_out[2]) < float(held_out[1])  # it learned something about images it never saw
    # The measure is said as it went: "nearer" only when the distance with the LoRA is the smaller one.
    assert (match[5] == "nearer") == (float(match[3]) < float(match[2])) and int(match[1]) == 6
    comparison = Path(settings.VAR_DIR) / "demo" / "before-after.png"
    assert Image.open(comparison).size[0] > 2 * 64  # two pictures side by side
    task = TrainingTask.objects.get()
    assert task.status == TrainingTask.Status.COMPLETED and task.attempt_count == 1
    assert task.worker_id.split(":")[1] == settings.Q_CLUSTER["name"]  # run by the cluster, not this process
    assert Path(task.weights.path).is_file() and task.weights.path in first
    assert f"/admin/models_app/trainingtask/{task.pk}/change/" in first and "/api/docs/" in first
    token = next(line.split()[-1] for line in first.splitlines() if line.strip().startswith("API key"))
    assert no_cluster_left()

    # `make demo` runs it with --serve: the server then runs beside the demo's worker, and the README's
    # examples complete against it as written (here: seed 002's generation, which needs a worker).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    process = subprocess.Popen(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "demo", "--steps", "10", "--serve", address],
        env=worker_environment(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    serving = threading.Event()

    def read_output() -> None:  # all of it, so that the server never blocks on a full pipe; ends with the process
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Serving at" in line:
                serving.set()

    reader = threading.Thread(target=read_output)
    reader.start()
    try:
        assert serving.wait(timeout=HANG_GUARD * 5), "".join(lines)
        second = "".join(lines)
        assert "Reusing model" in second and token in second, second  # the same team, key and model
        model = Model.objects.get()
        wait_for(lambda: http("GET", address, "/", token)[0] == 200, timeout=HANG_GUARD, what="the demo's server")

        generate = bodies(section("### Models and training (seed 002)"))[-1].replace("'$M'", model.public_id)
        status, answer = http("POST", address, "/v1/images/generation", token, generate)
        assert status == 200, answer
        job = f"/v1/jobs/{answer['result']['jobId']}"
        wait_for(
            lambda: http("GET", address, job, token)[1]["result"]["status"] in ("completed", "failed"),
            timeout=HANG_GUARD * 5,
            what="the README's generation against the demo",
        )
        shown = http("GET", address, job, token)[1]["result"]
        assert shown["status"] == "completed" and len(shown["images"]) == 2

        # The README's five-minute tour, request by request.
        readme = (Path(settings.BASE_DIR) / "README.md").read_text(encoding="utf-8")
        tour = readme[readme.index("## A five-minute tour") : readme.index("## Documentation")]
        [tour_generation] = bodies(tour)
        status, answer = http(
            "POST", address, "/v1/images/generation", token, tour_generation.replace("model_…", model.public_id)
        )
        assert status == 200, answer
        job = f"/v1/jobs/{answer['result']['jobId']}"
        wait_for(
            lambda: http("GET", address, job, token)[1]["result"]["status"] in ("completed", "failed"),
            timeout=HANG_GUARD * 5,
            what="the README tour's generation",
        )
        assert http("GET", address, job, token)[1]["result"]["status"] == "completed"
        reads = [path for path in re.findall(r'curl -s -H "\$AUTH" "?\$BASE(/[^\s"]+)', tour) if "…" not in path]
        assert reads == ["/v1/models", "/api/v1/training/"]
        for path in reads:
            assert http("GET", address, path, token)[0] == 200, path
    finally:
        # `kill`: handled as Ctrl-C is (the command turns SIGTERM into it): the server and the worker stop.
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=HANG_GUARD * 3)
        reader.join(timeout=HANG_GUARD)
    assert process.returncode == 0, "".join(lines)
    assert Team.objects.count() == 1 and ApiKey.objects.count() == 1 and Model.objects.count() == 1
    assert set(TrainingTask.objects.values_list("status", flat=True)) == {TrainingTask.Status.COMPLETED}
    assert no_cluster_left()


def http(method: str, address: str, path: str, token: str, body: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{address}{path}",
        data=body.encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            content = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        content, status = error.read(), error.code
    except OSError:
        return 0, {"result": {"status": "unreachable"}}
    try:
        return status, json.loads(content)
    except ValueError:
        return status, content.decode(errors="replace")


def test_a_demo_that_gives_up_cancels_its_training_and_stops_its_worker() -> None:
    # One second without progress is sure to pass while the worker starts: the demo gives up.
    with pytest.raises(CommandError, match="no progress for 1 s; it was cancelled"):
        run_demo("--steps", "500", "--timeout", "1")
    task = TrainingTask.objects.get()
    assert task.status == TrainingTask.Status.CANCELLED
    assert Model.objects.get().status == Model.Status.CANCELED
    assert no_cluster_left()


def test_the_progress_line_is_never_silent_while_a_phase_shows_no_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """A log (not a terminal) gets a line at least every HEARTBEAT_SECONDS, saying how long the phase has taken,
    while the base model loads for three minutes; then the steps' lines."""
    from models_app.management.commands import demo

    now = [1000.0]
    monkeypatch.setattr(demo.time, "monotonic", lambda: now[0])
    written: list[tuple[float, str]] = []

    class Log:
        def write(self, text: str, ending: str = "\n") -> None:
            written.append((now[0], text))

        def flush(self) -> None:
            pass

    line = demo.ProgressLine(Log())
    task = TrainingTask(status=TrainingTask.Status.PREPROCESSING, preprocessing_stage="loading", total_steps=300)
    for _ in range(180):  # one look a second, as the command does (twice a second)
        line.show(task)
        now[0] += 1
    times = [when for when, _text in written]
    assert times[0] == 1000.0 and "loading the base model" in written[0][1]
    assert max(later - earlier for earlier, later in itertools.pairwise(times)) <= demo.HEARTBEAT_SECONDS
    assert "still at it after 150 s" in written[-1][1]
    task.status, task.preprocessing_stage, task.current_step, task.progress = "TRAINING", "training", 30, 10.0
    line.show(task)
    assert "training: step 30/300 (10%)" in written[-1][1]
