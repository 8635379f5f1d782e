"""Every benchmark of the platform: prints a table of figures against their targets and writes JSON.

    python bench/run.py [--only train,learning,preprocess,queue,api,e2e,gpu,scaling] [--quick] [--out bench/results/run.json]

- train: our trainer against a diffusers-example reference loop on this machine's CPU, and each
  optimisation switched on/off (bench/train.py);
- learning: per family, held-out loss before/after a LoRA, how far generations move towards the
  training data with it, and how much a trigger word comes to matter (bench/learning.py);
- preprocess: 20 camera-sized JPEGs verified, oriented and resized (bench/preprocess.py);
- queue, api, e2e: start-to-pickup latency with a real qcluster, API throughput under gunicorn with
  PostgreSQL, and a 15-image 1000-step training from the start call to `ready` (bench/service.py);
- gpu: real-size SD 1.5 / SDXL / FLUX.1-dev steps, where CUDA is available (bench/gpu.py);
- scaling: one LoRA run on one process and on two ranks (gloo CPU processes, or two GPUs where this
  machine has them), same global batch (bench/scaling.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECTIONS = ("train", "learning", "preprocess", "queue", "api", "e2e", "gpu", "scaling")
TARGETS = {
    "train_speedup": 1.5,
    "preprocess_seconds": 5.0,
    "preprocess_peak_mb": 1024.0,
    "queue_p95_seconds": 1.0,
    # Issue 17: the read API on this 2-core machine, 16 clients (see bench/service.py's bench_api).
    "api_model_detail_rps": 400.0,
    "api_model_list_rps": 200.0,
    "api_model_list_p99_ms": 250.0,
}
# Which targets each API row is held to: (requests per second, p99 in ms or None). The task list
# (seed 003's resource: every field of 50 tasks, logs included) is reported without one.
API_TARGETS: dict[str, tuple[str, str | None]] = {
    "model detail": ("api_model_detail_rps", None),
    "model list": ("api_model_list_rps", "api_model_list_p99_ms"),
}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    import torch

    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


Row = tuple[str, str, str, bool | None]  # benchmark, measured, target, met (None: no target)


def rows_for(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "train" in results:
        train = results["train"]
        rows.append(
            (
                "train, tiny SD 1.5 CPU: ours vs reference",
                f"{train['ours_steps_per_second']} vs {train['reference_steps_per_second']} steps/s = x{train['speedup']}",
                f">= x{TARGETS['train_speedup']}",
                train["speedup"] >= TARGETS["train_speedup"],
            )
        )
        rows.append(
            (
                "  whole loop, compilation included",
                f"{train['ours_whole_loop_steps_per_second']} vs {train['reference_whole_loop_steps_per_second']} steps/s",
                "",
                None,
            )
        )
        for label, value in train.get("ablations_steps_per_second", {}).items():
            rows.append((f"  {label}", f"{value} steps/s", "", None))
    if "preprocess" in results:
        pre = results["preprocess"]
        rows.append(
            (
                "preprocess 20 JPEGs 4000x3000",
                f"{pre['seconds']} s",
                f"< {TARGETS['preprocess_seconds']} s",
                pre["seconds"] < TARGETS["preprocess_seconds"],
            )
        )
        rows.append(
            (
                "preprocess peak memory",
                f"{pre['peak_mb']} MB",
                f"< {TARGETS['preprocess_peak_mb']:.0f} MB",
                pre["peak_mb"] < TARGETS["preprocess_peak_mb"],
            )
        )
    if "queue" in results:
        queue = results["queue"]
        rows.append(
            (
                f"queue pickup, ORM broker ({queue['starts']} starts)",
                f"p50 {queue['p50_seconds']} s, p95 {queue['p95_seconds']} s",
                f"p95 < {TARGETS['queue_p95_seconds']} s",
                queue["p95_seconds"] < TARGETS["queue_p95_seconds"],
            )
        )
    if "queue_busy" in results:
        busy = results["queue_busy"]
        rows.append(
            (
                f"queue pickup by the idle cluster while another trains ({busy['starts']} starts)",
                f"p50 {busy['p50_seconds']} s, p95 {busy['p95_seconds']} s, max {busy['max_seconds']} s",
                f"p95 < {TARGETS['queue_p95_seconds']} s",
                busy["p95_seconds"] < TARGETS["queue_p95_seconds"],
            )
        )
    if "api" in results:
        api = results["api"]
        for name, figures in api["endpoints"].items():
            queries = figures["queries"]
            constant = len(set(queries.values())) == 1
            rows.append(api_row(name, figures, api["clients"]))
            if "cpu_ms_per_request" in figures:
                cpu = figures["cpu_ms_per_request"]
                rows.append(
                    (
                        f"  {name}: CPU per request",
                        f"gunicorn {cpu['server']} ms, PostgreSQL {cpu['postgres']} ms, load clients "
                        f"{cpu['clients']} ms ({figures['cores_busy']} cores busy)",
                        "",
                        None,
                    )
                )
            rows.append(
                (
                    f"  {name}: SQL queries (5 / 50 rows)",
                    f"{queries['5 rows']} / {queries['50 rows']}",
                    "constant",
                    constant,
                )
            )
    if "e2e" in results:
        e2e = results["e2e"]
        phases = ", ".join(f"{k} {v}" for k, v in e2e["phases_seconds"].items())
        rows.append(
            (
                f"end to end, {e2e['images']} images, {e2e['steps']} steps (tiny, CPU)",
                f"{e2e['wall_seconds']} s",
                "",
                None,
            )
        )
        rows.append(("  phases (s)", phases, "", None))
    if "gpu" in results:
        gpu = results["gpu"]
        if "skipped" in gpu:
            rows.append(("GPU real-size benchmarks", f"not run: {gpu['skipped']}", "", None))
        else:
            from bench.gpu import architectures

            specs = architectures()
            rows.append((f"GPU {gpu['device']} matmul rate", f"{gpu['matmul_tflops']} TFLOP/s", "", None))
            for name, variants in gpu["architectures"].items():
                targets = specs[name].get("targets", {})
                for label, row in variants.items():
                    if "error" in row:
                        rows.append((f"{name} {label}", row["error"], "", False))
                        continue
                    measured = f"{row['seconds_per_step']} s/step, {row.get('peak_memory_gb', '?')} GB" + (
                        f", MFU {row['mfu']:.0%}" if "mfu" in row else ""
                    )
                    target, met = "", None
                    if label == "default" and "seconds_per_step" in targets:
                        target = f"<= {targets['seconds_per_step']} s"
                        met = row["seconds_per_step"] <= targets["seconds_per_step"]
                        if "peak_memory_gb" in targets:
                            target += f", <= {targets['peak_memory_gb']:.0f} GB"
                            met = met and row.get("peak_memory_gb", 1e9) <= targets["peak_memory_gb"]
                    elif "quantized_peak_memory_gb" in targets and label.startswith(("fp8", "int8", "nf4")):
                        target = f"<= {targets['quantized_peak_memory_gb']:.0f} GB"
                        met = row.get("peak_memory_gb", 1e9) <= targets["quantized_peak_memory_gb"]
                    rows.append((f"{name} {row['resolution']} px, {label}", measured, target, met))
    if "scaling" in results:
        scaling = results["scaling"]
        rows.append(
            (
                f"scaling: 2 ranks vs 1 process ({scaling['device']}, {scaling['cores']} cores)",
                f"{scaling['two_ranks_steps_per_second']} vs {scaling['one_process_steps_per_second']} steps/s "
                f"= x{scaling['scaling']}",
                "x2 ideal",
                None,
            )
        )
        rows.append(
            (
                "  parallel efficiency: 2 ranks vs 2 x one process at a rank's threads",
                f"{scaling['two_ranks_steps_per_second']} vs 2 x {scaling['one_process_rank_threads_steps_per_second']} "
                f"steps/s = {scaling['efficiency']:.0%}",
                "100% ideal",
                None,
            )
        )
    for family, row in results.get("learning", {}).items():
        rows.append(
            (
                f"learning {family}: held-out loss ({row['steps']} steps)",
                f"{row['heldout_loss_before']} -> {row['heldout_loss_best']} at {row['heldout_loss_best_step']} "
                f"(-{row['heldout_loss_drop']:.0%}), {row['heldout_loss_after']} at the end",
                f">= -{row['target_loss_drop']:.0%}",
                row["heldout_loss_drop"] >= row["target_loss_drop"],
            )
        )
        rows.append(
            (
                f"learning {family}: generations nearer the data",
                f"{row['generation_distance_without']} -> {row['generation_distance_with']} ({row['generation_closer']:.0%} closer)",
                f">= {row['target_closer']:.0%}",
                row["generation_closer"] >= row["target_closer"],
            )
        )
        if "trigger_pull_learned" in row:
            rows.append(
                (
                    f"learning {family}: trigger word ({row['trigger_steps']} steps)",
                    f"{row['trigger_pull_learned']:+.2f} of blue->red ({row['trigger_pull_base']} -> {row['trigger_pull_trained']})",
                    f">= +{row['target_trigger_pull']:.2f}",
                    row["trigger_pull_learned"] >= row["target_trigger_pull"],
                )
            )
    return rows  # fmt: skip


def api_row(name: str, figures: dict[str, Any], clients: int) -> Row:
    """An API endpoint's throughput and latency against its targets; any error answer fails it."""
    measured = f"{figures['requests_per_second']} req/s, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms"
    if figures.get("errors"):
        measured += f", {figures['errors']} errors"
    if name not in API_TARGETS:
        return (f"API {name}, {clients} clients", measured, "", None)
    rps_key, p99_key = API_TARGETS[name]
    target = f">= {TARGETS[rps_key]:.0f} req/s"
    met = figures["requests_per_second"] >= TARGETS[rps_key] and not figures.get("errors")
    if p99_key is not None:
        target += f", p99 < {TARGETS[p99_key]:.0f} ms"
        met = met and figures["p99_ms"] < TARGETS[p99_key]
    return (f"API {name}, {clients} clients", measured, target, met)


def print_table(rows: list[Row]) -> None:
    width = max(len(r[0]) for r in rows) + 2
    measured_width = max(len(r[1]) for r in rows) + 2
    target_width = max(18, max(len(r[2]) for r in rows) + 2)
    print(f"{'benchmark':<{width}}{'measured':<{measured_width}}{'target':<{target_width}}met")
    for name, measured, target, met in rows:
        verdict = "" if met is None else ("yes" if met else "NO")
        print(f"{name:<{width}}{measured:<{measured_width}}{target:<{target_width}}{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--quick", action="store_true", help="fewer steps and shorter runs (a smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="steps of each CPU training run (default 150)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "run.json")
    args = parser.parse_args()
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from training.engine import quiet_libraries
    from training.engine.testing import build_tiny_model

    quiet_libraries()
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    steps = args.steps or (20 if args.quick else 150)
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch_name:
        scratch = Path(scratch_name)
        base = build_tiny_model("sd15", scratch / "base-models" / "tiny-sd15")
        if "train" in sections:
            from bench import train

            results["train"] = train.run(scratch / "train", base, steps=steps, ablations=not args.quick)
            results["train"]["target_speedup"] = TARGETS["train_speedup"]
        if "learning" in sections:
            from bench import learning

            results["learning"] = learning.run(scratch / "learning", quick=args.quick)
        if "preprocess" in sections:
            from bench import preprocess

            results["preprocess"] = preprocess.run(scratch / "preprocess")
        if sections & {"queue", "api", "e2e"}:
            from bench import service

            results.update(service.run(scratch / "service", base, sections=sections, quick=args.quick))
        if "gpu" in sections:
            from bench import gpu

            results["gpu"] = gpu.run(scratch / "gpu", quick=args.quick)
        if "scaling" in sections:
            from bench import scaling

            results["scaling"] = scaling.run(scratch / "scaling", base, steps=min(steps, 40))
    results["targets"] = TARGETS
    print()
    print_table(rows_for(results))
    info = results["machine"]
    print(f"\nmachine: {info['cpu']} ({info['cpu_count']} cores, {info['memory_gb']} GB), torch {info['torch']}, "
          f"GPU: {info['gpu'] or 'none'}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
