"""The demo's recipe (contract/demo.py) measured over many seeds: which measures of learning move the right way
every time (the demo reports only those), and whether compiling pays on the CPU for a run this long.

Per seed (a different generated dataset and training seed; the first is the demo's own pair, `seeds_of`): the held-out loss at the start, at its lowest point
and at the end; `caption_match` on training images and on held-out ones (generations of an image's own caption,
nearer that image with the LoRA than without); and `shift_towards` with the demo's one prompt against the whole
dataset's mean (the measure the demo used to report).

Targets: each reported measure improves on every seed (`ALWAYS`); the demo (set-up excluded) trains within
`DEMO_TRAIN_SECONDS` on a quiet 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ALWAYS = 1.0  # the share of seeds on which a measure the demo reports must improve
DEMO_TRAIN_SECONDS = 180


def seeds_of(run: int) -> tuple[int, int]:
    """Run `run` (from 1): its dataset seed and training seed. Run 1 is the demo's own (DATA_SEED, TRAINING_SEED);
    the others move both."""
    from contract import demo

    return demo.DATA_SEED + run - 1, demo.TRAINING_SEED + run - 1


def demo_spec(base: Path, folder: Path, *, seed: int, steps: int, compile_mode: str) -> Any:
    from contract import demo
    from training.engine import DatasetImage, TrainingSpec
    from training.engine.testing.images import make_images

    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    images = []
    data_seed, training_seed = seeds_of(seed)
    generated = make_images(demo.IMAGES, seed=data_seed, trigger_word=demo.TRIGGER_WORD)
    for index, image in enumerate(generated):
        path = data / image.name
        path.write_bytes(image.content)
        images.append(
            DatasetImage(
                path=path, name=image.name, caption=image.caption, validation=index >= demo.IMAGES - demo.HELD_OUT
            )
        )
    p = demo.PARAMETERS
    return TrainingSpec(
        base_model=str(base), output_dir=folder / "out", images=images, trigger_word=demo.TRIGGER_WORD,
        rank=p["rank"], learning_rate=p["learning_rate"], batch_size=p["batch_size"], resolution=p["resolution"],
        optimizer=p["optimizer"], captioning_strategy=p["preprocessing_captioning_strategy"], steps=steps,
        sample_every=max(1, steps // demo.VALIDATIONS), save_every=100_000, seed=training_seed, compile=compile_mode,
    )  # fmt: skip


def run_seed(base: Path, folder: Path, seed: int, *, steps: int) -> dict[str, Any]:
    from bench.learning import validation_recorder
    from contract import demo
    from training.engine import train
    from training.engine.evaluate import caption_match, shift_towards

    spec = demo_spec(base, folder, seed=seed, steps=steps, compile_mode="off")
    recorder = validation_recorder()
    began = time.perf_counter()
    result = train(spec, recorder)
    seconds = time.perf_counter() - began
    trained = [image for image in spec.images if not image.validation]
    held_out = [image for image in spec.images if image.validation]
    size = spec.resolution
    seeds = list(demo.CAPTION_MATCH_SEEDS)
    on_trained = caption_match(
        str(base), [(image.path, image.caption) for image in trained[: demo.CAPTION_MATCH_IMAGES]],
        adapter=result.weights_path, seeds=seeds, size=size,
    )  # fmt: skip
    on_held_out = caption_match(
        str(base), [(image.path, image.caption) for image in held_out], adapter=result.weights_path, seeds=seeds,
        size=size,
    )  # fmt: skip
    old = shift_towards(
        str(base), [image.path for image in trained], adapter=result.weights_path, prompt=demo.PROMPT,
        seeds=[1, 2, 3, 4], size=size,
    )  # fmt: skip
    losses = recorder.losses
    best = min(losses.values())
    return {
        "seed": seed,
        "data_seed": seeds_of(seed)[0],
        "training_seed": seeds_of(seed)[1],
        "train_seconds": round(seconds, 1),
        "heldout_before": round(losses[0], 4),
        "heldout_best": round(best, 4),
        "heldout_after": round(losses[steps], 4),
        "caption_match_trained": [round(on_trained.without, 4), round(on_trained.with_adapter, 4)],
        "caption_match_held_out": [round(on_held_out.without, 4), round(on_held_out.with_adapter, 4)],
        "prompt_vs_dataset_mean": [round(old.without, 4), round(old.with_adapter, 4)],
    }


MEASURES = {
    "held-out loss, lowest vs start": lambda row: row["heldout_best"] < row["heldout_before"],
    "held-out loss, end vs start": lambda row: row["heldout_after"] < row["heldout_before"],
    "caption match, training images": lambda row: row["caption_match_trained"][1] < row["caption_match_trained"][0],
    "caption match, held-out images": lambda row: row["caption_match_held_out"][1] < row["caption_match_held_out"][0],
    "one prompt vs the dataset's mean (the old report)": lambda row: (
        row["prompt_vs_dataset_mean"][1] < row["prompt_vs_dataset_mean"][0]
    ),
}
REPORTED = ("held-out loss, lowest vs start", "caption match, training images")


def compile_timing(base: Path, folder: Path, steps: int) -> dict[str, Any]:
    """Seconds for `steps` and 2x`steps` of the demo's training, uncompiled, compiled with a cold cache and
    compiled again (warm), each in its own process so that a cold cache is really cold."""
    rows: dict[str, Any] = {}
    cache = folder / "compile-cache"
    for label, mode, count in (
        ("uncompiled", "off", steps), ("uncompiled", "off", 2 * steps),
        ("compiled, cold cache", "blocks", steps),
        ("compiled, warm cache", "blocks", steps), ("compiled, warm cache", "blocks", 2 * steps),
    ):  # fmt: skip
        code = (
            "import sys, time; from pathlib import Path; from bench.demo import demo_spec; "
            "from training.engine import SilentCallbacks, train; "
            f"spec = demo_spec(Path({str(base)!r}), Path({str(folder / mode)!r}), seed=1, steps={count}, "
            f"compile_mode={mode!r}); t = time.perf_counter(); train(spec, SilentCallbacks()); "
            "print(time.perf_counter() - t)"
        )
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"), "PYTHONPATH": os.getcwd()}
        output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        rows.setdefault(label, {})[count] = round(float(output.stdout.strip().splitlines()[-1]), 1)
    per_step = {label: (times[2 * steps] - times[steps]) / steps for label, times in rows.items() if len(times) == 2}
    overhead = rows["compiled, cold cache"][steps] - per_step["compiled, warm cache"] * steps
    saving = per_step["uncompiled"] - per_step["compiled, warm cache"]
    return {
        "seconds": rows,
        "seconds_per_step": {label: round(value, 4) for label, value in per_step.items()},
        "cold_compile_overhead_seconds": round(overhead, 1),
        "break_even_steps": round(overhead / saving) if saving > 0 else None,  # None: compiling never pays here
    }


def run(scratch: Path, *, seeds: int = 10, steps: int | None = None, timing: bool = True) -> dict[str, Any]:
    from contract import demo
    from contract.families import DEMO_FAMILY
    from training.engine.testing import build_tiny_model

    steps = steps or demo.STEPS
    base = build_tiny_model(DEMO_FAMILY, scratch / "base")
    rows = []
    for seed in range(1, seeds + 1):
        row = run_seed(base, scratch / f"seed-{seed}", seed, steps=steps)
        print(row, flush=True)
        rows.append(row)
    summary = {name: sum(1 for row in rows if moved(row)) for name, moved in MEASURES.items()}
    result: dict[str, Any] = {"steps": steps, "seeds": rows, "improved_on": summary}
    if timing:
        result["compile"] = compile_timing(base, scratch / "timing", 100)
    return result


def print_table(result: dict[str, Any]) -> None:
    seeds = len(result["seeds"])
    print(f"\nthe demo's recipe, {result['steps']} steps, over {seeds} seeds")
    print(f"{'measure':52} {'improved':>10} {'reported':>9}")
    for name, count in result["improved_on"].items():
        print(f"{name:52} {count:>4}/{seeds:<5} {'yes' if name in REPORTED else '':>9}")
    for name in REPORTED:
        met = result["improved_on"][name] >= ALWAYS * seeds
        print(f"target: '{name}' improves on every seed: {'met' if met else 'NOT MET'}")
    train = sorted(row["train_seconds"] for row in result["seeds"])
    print(f"training seconds: median {train[len(train) // 2]}, max {train[-1]} (target < {DEMO_TRAIN_SECONDS})")
    if "compile" in result:
        timing = result["compile"]
        print(f"compile on this CPU: {timing['seconds_per_step']} s/step, cold compile overhead "
              f"{timing['cold_compile_overhead_seconds']} s, break-even {timing['break_even_steps'] or 'never'} steps")  # fmt: skip


if __name__ == "__main__":
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--no-timing", action="store_true", help="skip the compile timing")
    parser.add_argument("--out", type=Path, default=None, help="write the raw results here (JSON)")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        outcome = run(Path(scratch), seeds=arguments.seeds, steps=arguments.steps, timing=not arguments.no_timing)
    print_table(outcome)
    if arguments.out:
        arguments.out.write_text(json.dumps(outcome, indent=2))
