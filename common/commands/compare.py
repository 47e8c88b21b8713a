"""Train all four frameworks from the same initial weights on the same data in the same order,
and write one report: results side by side, the per-stage shape table, three learning curves.

    resnet3 compare --dataset digits --epochs 4 --resize 32 --batch-size 64

Each framework trains in its own process (`python -m resnet_<fw>.train`, same flags), so that
its peak memory is its own and thread settings do not leak between frameworks. On SIGTERM or
Ctrl-C, compare stops the training it started (and its children), says so, and exits 143 or 130.
--out is held while compare runs: a second compare (or train run) there is refused.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from common.commands import bench
from common.commands.cli import (Terminated, add_frameworks_flag, description, frameworks_arg,
                                 guarded, non_negative_int, positive_int, train_flag_table)
from common.commands.launch import Process, stop
from common.core.files import atomic_path, lock_folder, writable_dir
from common.frameworks import FRAMEWORKS, NAMES, record
from common.commands.plots import plot_curves, plot_seed_bands
from common.core.devices import check_memory
from common.core.spec import get_spec
from common.commands.summary import summary
from common.core.tables import render
from common.commands.train import RUN, check_args, parser


def train_flags(args, framework_out: Path) -> list[str]:
    """The command-line flags that reproduce `args` for one framework's train script."""
    flags = train_flag_table().argv(args, leave=("out", "resume"))
    return flags + ["--out", str(framework_out)] + (["--resume"] if args.resume else [])


def run_framework(framework: str, args, out: Path) -> dict:
    """Train one framework in a child process, echoing its lines; returns its run.json, or
    {"error": why} when it fails (its `error:` line, else its last line and exit status), so
    that the other frameworks still run and the report lists the failure."""
    flags = train_flags(args, out / framework)
    cmd = [sys.executable, "-m", f"{record(framework).package}.train", *flags]
    if args.workers > 1:  # data-parallel on the framework's own engine; --threads is shared
        at = flags.index("--threads") + 1
        flags[at] = str(max(1, args.threads // args.workers))
        cmd = [sys.executable, "-m", "common.commands.launch", "--framework", framework, "--workers",
               str(args.workers), "--", *flags]
    print(f"== {NAMES[framework]}: {' '.join(cmd[1:])}", flush=True)
    # MXNet reads OMP_NUM_THREADS once, when it loads: set it for the child before it starts.
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": str(args.threads)}
    last, error = "", ""
    # In a session of its own, so that stop() finds it and every process it started.
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as child:
        try:
            for line in child.stderr:  # echoed as it comes; the last error line is kept
                sys.stderr.write(line)
                if line.strip():
                    last = line.strip()
                    error = last.removeprefix("error: ") if last.startswith("error: ") else error
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (cli.guarded raises Terminated)
            stop([Process(framework, child)])
            why = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
            print(f"== {NAMES[framework]}: {why}; stopped its training (process {child.pid}) "
                  f"and every process it started", file=sys.stderr, flush=True)
            raise
    if child.returncode == 0:
        return json.loads((out / framework / RUN).read_text())
    why = error or f"exit status {child.returncode}" + (f": {last}" if last else "")
    print(f"== {NAMES[framework]} failed: {why}", file=sys.stderr, flush=True)
    return {"error": why}


def measure_speed(runs: dict[str, dict], args) -> tuple[list[dict], list[str]]:
    """resnet-bench at the settings of the runs (--bench-rounds rounds of 2 steps per side):
    each framework's steps against its plain reference step."""
    first = next(iter(runs.values()))
    settings = argparse.Namespace(
        arch=first["arch"], input_size=first["input_size"], batch_size=args.batch_size,
        in_channels=first["in_channels"], num_classes=first["num_classes"], phase="both",
        precision=args.precision, compile=args.compile, channels_last=args.channels_last,
        device=args.device,
        threads=args.threads, steps=2,
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
        cells = [NAMES[fw], _num(run.get("train_examples_per_sec"), ".1f", ONE_STEP),
                 _num(run.get("infer_examples_per_sec"), ".1f", ONE_STEP),
                 _num(run.get("first_step_seconds"), ".2f", NO_STEP),
                 _num(run.get("first_eval_step_seconds"), ".2f", NO_STEP),
                 _num(run.get("peak_rss_mib"), ".0f")]
        for key, fmt in (("ratio_wall", ".3f"), ("peak_share", ".1%")):
            for phase in ("train", "infer"):
                r = by.get((fw, phase), {})
                cells.append(_num(r.get(key), fmt, "not measured by the bench")
                             if "error" not in r else r["error"])
        table.append(cells)
    return (render(header, table, markdown=True) + "\n\n"
            "img/s: the training run's steady speed (its first train and inference steps, where a "
            "framework traces or compiles, are timed apart). Ratio to reference: resnet-bench's "
            "wall-clock ratio of the project's step to a plain step written directly in the "
            "framework, interleaved in one process (>= 0.97 is the project's contract). "
            + " ".join(lines) + "\n")


# Why a figure of a run can be missing: said in its cell, as "n/a (why)".
ONE_STEP = "one step per epoch, timed apart as the first"
NO_STEP = "no step in this process"


def _num(value, fmt: str, why: str = "not measured") -> str:
    return f"n/a ({why})" if value is None else format(value, fmt)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def results_row(framework: str, run: dict) -> list:
    """One framework's row of the Results table; a missing figure reads "n/a (why)": a run of
    one step per epoch has no steady speed (its step is the first, timed apart), a data set
    without test examples no test accuracy, a run without epochs no loss."""
    hist = run.get("history") or []
    first, last = (hist[0], hist[-1]) if hist else ({}, {})
    timed = [r for r in hist if r.get("examples_per_sec") is not None]
    no_epoch = "no epoch"
    return [NAMES[framework], _num(first.get("train_loss"), ".4f", no_epoch),
            _num(last.get("train_loss"), ".4f", no_epoch),
            _num(last.get("train_acc"), ".3f", no_epoch),
            _num(last.get("test_acc"), ".3f", "no test examples" if hist else no_epoch),
            _num(_mean([r["examples_per_sec"] for r in timed]), ".1f", ONE_STEP),
            _num(_mean([r.get("seconds") for r in timed]), ".2f", ONE_STEP),
            _num(run.get("peak_rss_mib"), ".0f"), run["params"]["trainable"],
            run["params"]["non_trainable"], run["params"]["total"]]


def failures_section(failed: dict[str, str]) -> str:
    return ("## Failures\n\n" + render(["framework", "error"], [[NAMES[fw], why]
                                                               for fw, why in failed.items()],
                                       markdown=True) + "\n\n") if failed else ""


def report(runs: dict[str, dict], args, out: Path, speed: str = "",
           failed: dict[str, str] | None = None, ran: Sequence[str] = (), seeds: str = "") -> str:
    """The markdown report, written to out/report.md, with curves.png beside it. Frameworks in
    `failed` (name -> error) are listed with their error under Failures; `ran` (bench.what_ran:
    versions, kernel libraries, CPU flags) under What ran."""
    failed = failed or {}
    if not runs:
        text = (f"# {args.arch} on {args.dataset}: every framework failed\n\n"
                + failures_section(failed))
        with atomic_path(out / "report.md") as tmp:
            tmp.write_text(text)
        return text
    first = next(iter(runs.values()))
    rows = [results_row(fw, run) for fw, run in runs.items()]
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
            f"{os.cpu_count()} CPU cores"
            + (f", {first['workers']} worker processes per framework (resnet-launch; peak RSS "
               f"is the first worker's)" if first.get("workers", 1) > 1 else "")
            + f".\n\n## Results\n\n{render(header, rows, markdown=True)}\n\n"
            f"Examples/sec and s/epoch count training steps only; peak RSS is each framework's "
            f"own process.\n\n" + seeds + failures_section(failed)
            + (f"## Speed and memory\n\n{speed}\n" if speed else "")
            + ("## What ran\n\n" + "".join(f"- {line}\n" for line in ran) + "\n" if ran else "")
            + f"## Shapes and parameters per part (input {size}x{size})\n\n"
            f"{shapes}\n\n## Learning curves\n\n![learning curves](curves.png)\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text)
    return text


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("resnet-compare")
    p.description = description(__doc__)
    p.set_defaults(out="reports/compare")
    add_frameworks_flag(p)
    p.add_argument("--workers", type=positive_int, default=1,
                   help="train each framework on this many processes through resnet-launch "
                        "(--batch-size is the global batch; --threads is shared among them)")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="train each framework from this many seeds (--seed, --seed+1, ...: the "
                        "same initial weights and data orders in every framework) and report "
                        "test accuracy as mean ± sd, min and max; the report's other sections "
                        "are the first seed's")
    p.add_argument("--target", type=accuracy_arg, default=None,
                   help="a test accuracy in (0, 1]: report the epochs and training seconds each "
                        "framework took to first reach it (DAWNBench's time to accuracy)")
    p.add_argument("--bench-rounds", type=non_negative_int, default=3,
                   help="rounds of resnet-bench for the speed section (0: no speed section)")
    args = p.parse_args(argv)
    check_args(p, args)
    frameworks = frameworks_arg(p, args.frameworks, FRAMEWORKS)
    if args.resize:  # up front, for every framework (the workers of --workers share a machine)
        check_memory(get_spec(args.arch, in_channels=1), args.batch_size, args.resize, True,
                     f"--batch-size {args.batch_size}, --resize {args.resize}")
    out = writable_dir(args.out)
    with lock_folder(out):  # one compare (or train run) in --out at a time
        return compare(args, frameworks, out)


def train_seeds(args, frameworks: Sequence[str], out: Path) -> dict[int, dict[str, dict]]:
    """seed -> framework -> its run.json (or {"error": why}). One seed: out/<framework>, as
    always; --seeds N: seeds --seed .. --seed+N-1, each in out/seed<S>/<framework>, every
    framework with the same seed (the same initial weights and data order) in turn."""
    if args.seeds == 1:
        return {args.seed: {fw: run_framework(fw, args, out) for fw in frameworks}}
    by_seed = {}
    for seed in range(args.seed, args.seed + args.seeds):
        at = argparse.Namespace(**vars(args) | {"seed": seed})
        print(f"== seed {seed} ({seed - args.seed + 1} of {args.seeds})", flush=True)
        by_seed[seed] = {fw: run_framework(fw, at, out / f"seed{seed}") for fw in frameworks}
    return by_seed


def accuracy_arg(text: str) -> float:
    """`--target`'s argparse type: a test accuracy in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def time_to_target(run: dict, target: float) -> tuple[int, float] | None:
    """(epochs, training seconds) until the run's test accuracy first reached `target`: the
    steps' time to the end of that epoch, its first step included, evaluation excluded; None
    if it never did."""
    seconds = run.get("first_step_seconds") or 0.0
    for row in run.get("history") or []:
        seconds += row.get("seconds") or 0.0
        if row.get("test_acc") is not None and row["test_acc"] >= target:
            return row["epoch"], seconds
    return None


def seed_statistics(accuracies: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1; 0 for one value), min and max."""
    n = len(accuracies)
    mean = sum(accuracies) / n
    sd = (sum((a - mean) ** 2 for a in accuracies) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"n": n, "mean": mean, "sd": sd, "min": min(accuracies), "max": max(accuracies)}


def seeds_section(by_seed: dict[int, dict[str, dict]], target: float | None = None) -> str:
    """The test accuracy of the last epoch across seeds, per framework: mean ± sd, min, max,
    and with a target the epochs and seconds to reach it; "" for a single seed without a
    target. Seeds where a framework failed or measured no test accuracy are left out, and the
    count says so."""
    if len(by_seed) < 2 and target is None:
        return ""
    frameworks = list(dict.fromkeys(fw for runs in by_seed.values() for fw in runs))
    rows = []
    for fw in frameworks:
        accs = [hist[-1]["test_acc"] for runs in by_seed.values()
                if (hist := runs.get(fw, {}).get("history"))
                and hist[-1].get("test_acc") is not None]
        if not accs:
            rows.append([NAMES[fw], f"0 of {len(by_seed)}", "n/a (no run measured it)", "", ""])
            continue
        s = seed_statistics(accs)
        rows.append([NAMES[fw], f"{s['n']} of {len(by_seed)}", f"{s['mean']:.4f} ± {s['sd']:.4f}",
                     f"{s['min']:.4f}", f"{s['max']:.4f}"]
                    + (target_cells([runs[fw] for runs in by_seed.values() if fw in runs
                                     and "error" not in runs[fw]], target) if target else []))
    seeds = ", ".join(map(str, by_seed))
    header = ["framework", "seeds", "test acc mean ± sd", "min", "max"]
    if target:
        header += [f"reached {target:g}", "epochs to it (mean)", "train s to it (mean)"]
        rows = [row + [""] * (len(header) - len(row)) for row in rows]
    return (f"## Test accuracy across seeds\n\nSeeds {seeds}: each seed gives every framework the "
            f"same initial weights and data order; the last epoch's test accuracy, sd with n - 1."
            + (f" Time to {target:g}: the epoch where the test accuracy first reached it, and "
               f"the training steps' seconds to its end (first step included, evaluation "
               f"excluded), over the seeds that reached it." if target else "")
            + "\n\n" + render(header, rows, markdown=True) + "\n\n")


def target_cells(runs: list[dict], target: float) -> list[str]:
    """How many runs reached the target, and their mean epochs and seconds to it."""
    reached = [t for t in (time_to_target(r, target) for r in runs) if t is not None]
    if not reached:
        return [f"0 of {len(runs)}", "n/a (not reached)", "n/a (not reached)"]
    return [f"{len(reached)} of {len(runs)}", f"{sum(e for e, _ in reached) / len(reached):.1f}",
            f"{sum(s for _, s in reached) / len(reached):.1f}"]


def compare(args, frameworks: tuple[str, ...], out: Path) -> int:
    """Train each framework, measure their speed, write the report; 1 if any failed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the shape table loads TensorFlow here
    by_seed = train_seeds(args, frameworks, out)
    results = next(iter(by_seed.values()))
    runs = {fw: r for fw, r in results.items() if "error" not in r}
    failed = {fw: r["error"] for fw, r in results.items() if "error" in r}
    speed = ""
    if args.bench_rounds and runs:
        print("== speed: resnet-bench at the same settings", flush=True)
        speed = speed_section(runs, *measure_speed(runs, args))
    ran = bench.what_ran(tuple(runs)) if runs else []
    seeds = seeds_section(by_seed, args.target)
    if len(by_seed) > 1:
        histories = {NAMES[fw]: [r[fw]["history"] for r in by_seed.values()
                                 if r.get(fw, {}).get("history")] for fw in frameworks}
        plot_seed_bands({k: v for k, v in histories.items() if v}, out / "seeds.png",
                        f"test accuracy over seeds {', '.join(map(str, by_seed))}")
        seeds += "![test accuracy across seeds](seeds.png)\n\n"
    print(report(runs, args, out, speed, failed, ran, seeds))
    print(f"report: {out / 'report.md'}" + (f", curves: {out / 'curves.png'}" if runs else ""))
    if failed:
        print(f"error: {len(failed)} of {len(results)} frameworks failed: "
              + "; ".join(f"{NAMES[fw]}: {why}" for fw, why in failed.items()), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
