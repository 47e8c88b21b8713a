"""Train all three frameworks from the same initial weights on the same data in the same order,
and write one report: results side by side, the per-stage shape table, three learning curves.

    python -m common.compare --dataset digits --epochs 4 --resize 32 --batch-size 64

Each framework trains in its own process (`python -m resnet_<fw>.train`, same flags), so that
its peak memory is its own and thread settings do not leak between frameworks.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from common import bench
from common.cli import frameworks_arg
from common.files import atomic_path
from common.frameworks import FRAMEWORKS, NAMES
from common.plots import plot_curves
from common.spec import get_spec
from common.summary import summary
from common.tables import render
from common.train import RUN, check_args, parser


def train_flags(args, framework_out: Path) -> list[str]:
    """The command-line flags that reproduce `args` for one framework's train script."""
    flags = []
    for action in parser("x")._actions:
        if not action.option_strings or action.dest in ("help", "out", "resume"):
            continue
        value = getattr(args, action.dest)
        if isinstance(action, argparse._StoreTrueAction):
            flags += [action.option_strings[0]] if value else []
        elif value is not None:
            flags += [action.option_strings[0], str(value)]
    flags += ["--out", str(framework_out)] + (["--resume"] if args.resume else [])
    return flags


def run_framework(framework: str, args, out: Path) -> dict:
    """Train one framework in a child process, echoing its lines; returns its run.json."""
    cmd = [sys.executable, "-m", f"resnet_{framework}.train", *train_flags(args, out / framework)]
    print(f"== {NAMES[framework]}: {' '.join(cmd[1:])}", flush=True)
    # MXNet reads OMP_NUM_THREADS once, when it loads: set it for the child before it starts.
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{NAMES[framework]}: expected its train script to finish with exit "
                           f"status 0, got {done.returncode}")
    return json.loads((out / framework / RUN).read_text())


def measure_speed(runs: dict[str, dict], args) -> tuple[list[dict], list[str]]:
    """resnet-bench at the settings of the runs (--bench-rounds rounds of 2 steps per side):
    each framework's steps against its plain reference step."""
    first = next(iter(runs.values()))
    settings = argparse.Namespace(
        arch=first["arch"], input_size=first["input_size"], batch_size=args.batch_size,
        in_channels=first["in_channels"], num_classes=first["num_classes"], phase="both",
        precision=args.precision, compile=args.compile, threads=args.threads, steps=2,
        warmup=1, rounds=args.bench_rounds, timeout=1800)
    return bench.run(tuple(runs), settings)


def speed_section(runs: dict[str, dict], rows: list[dict], lines: list[str]) -> str:
    """Speed and memory: the training run's own figures (first steps apart), and the bench's
    ratio to the reference step and share of the machine's FP32 peak."""
    by = {(r["framework"], r["phase"]): r for r in rows}
    header = ["framework", "train img/s", "infer img/s", "first train step s",
              "first infer step s", "peak RSS MiB", "train ratio to reference",
              "infer ratio to reference", "train % FP32 peak", "infer % FP32 peak"]
    table = []
    for fw, run in runs.items():
        cells = [NAMES[fw], _num(run.get("train_examples_per_sec"), ".1f"),
                 _num(run.get("infer_examples_per_sec"), ".1f"),
                 _num(run.get("first_step_seconds"), ".2f"),
                 _num(run.get("first_eval_step_seconds"), ".2f"), f"{run['peak_rss_mib']:.0f}"]
        for key, fmt in (("ratio_wall", ".3f"), ("peak_share", ".1%")):
            for phase in ("train", "infer"):
                r = by.get((fw, phase), {})
                cells.append(_num(r.get(key), fmt) if "error" not in r else r["error"])
        table.append(cells)
    return (render(header, table, markdown=True) + "\n\n"
            "img/s: the training run's steady speed (its first train and inference steps, where a "
            "framework traces or compiles, are timed apart). Ratio to reference: resnet-bench's "
            "wall-clock ratio of the project's step to a plain step written directly in the "
            "framework, interleaved in one process (>= 0.97 is the project's contract). "
            + " ".join(lines) + "\n")


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(runs: dict[str, dict], args, out: Path, speed: str = "") -> str:
    """The markdown report, written to out/report.md, with curves.png beside it."""
    first = next(iter(runs.values()))
    rows = []
    for fw, run in runs.items():
        last, hist = run["history"][-1], run["history"]
        rows.append([NAMES[fw], f"{hist[0]['train_loss']:.4f}", f"{last['train_loss']:.4f}",
                     f"{last['train_acc']:.3f}", f"{last['test_acc']:.3f}",
                     f"{sum(r['examples_per_sec'] for r in hist) / len(hist):.1f}",
                     f"{sum(r['seconds'] for r in hist) / len(hist):.2f}",
                     f"{run['peak_rss_mib']:.0f}", run["params"]["trainable"],
                     run["params"]["non_trainable"], run["params"]["total"]])
    header = ["framework", "epoch-1 loss", "final loss", "train acc", "test acc",
              "examples/sec", "s/epoch (train)", "peak RSS MiB", "trainable", "BN stats", "total"]
    spec = get_spec(first["arch"], in_channels=first["in_channels"],
                    num_classes=first["num_classes"])
    size = first["input_size"]
    shapes, _ = summary(spec, size, tuple(runs), markdown=True)
    settings = ", ".join(f"{k} {v}" for k, v in first["config"].items())
    plot_curves({NAMES[fw]: run["history"] for fw, run in runs.items()}, out / "curves.png",
                f"{first['arch']} on {first['dataset']}")
    text = (f"# {first['arch']} on {first['dataset']}: {', '.join(NAMES[f] for f in runs)}\n\n"
            f"Same initial weights, same data in the same order. Settings: {settings}, "
            f"{os.cpu_count()} CPU cores.\n\n## Results\n\n{render(header, rows, markdown=True)}\n\n"
            f"Examples/sec and s/epoch count training steps only; peak RSS is each framework's "
            f"own process.\n\n"
            + (f"## Speed and memory\n\n{speed}\n" if speed else "")
            + f"## Shapes and parameters per part (input {size}x{size})\n\n"
            f"{shapes}\n\n## Learning curves\n\n![learning curves](curves.png)\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("resnet-compare")
    p.description = __doc__.splitlines()[0]
    p.set_defaults(out="reports/compare")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="comma-separated subset of torch,tf,mx")
    p.add_argument("--bench-rounds", type=int, default=5,
                   help="rounds of resnet-bench for the speed section (0: no speed section)")
    args = p.parse_args(argv)
    check_args(p, args)
    if args.bench_rounds < 0:
        p.error(f"--bench-rounds: expected 0 or more, got {args.bench_rounds}")
    frameworks = frameworks_arg(p, args.frameworks, FRAMEWORKS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the shape table loads TensorFlow here
    try:
        runs = {fw: run_framework(fw, args, out) for fw in frameworks}
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    speed = ""
    if args.bench_rounds:
        print("== speed: resnet-bench at the same settings", flush=True)
        speed = speed_section(runs, *measure_speed(runs, args))
    print(report(runs, args, out, speed))
    print(f"report: {out / 'report.md'}, curves: {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
