"""resnet-bench: each framework's own training and inference step against a plain step written
directly in that framework, so that the speed column of `compare` is shown to measure the
frameworks and not this project.

    python -m common.commands.bench                                   # d2l_resnet18, 96 px, batch 64
    python -m common.commands.bench --input-size 32 --batch-size 128 --threads 1 --phase train

Like timm's benchmark.py, for three frameworks. Each framework runs in its own process. In it,
the project's step (the `Adapter` that training and `compare` drive: a NumPy NCHW batch in,
NumPy out) and a reference step (`resnet_<fw>/reference.py`: plain framework code, random
tensors already in the framework's layout) alternate, A B A B ..., `--steps` steps at a time,
for `--rounds` rounds, so that drift of a shared host hits both alike. Step times are the
medians (min, max) of the per-round means; images per CPU-second count the process's CPU time
over the same steps, which is the steadier figure on a busy machine. The ratios to the
reference are medians of the per-round ratios (A over the B right after it), in wall time and
in CPU time. First calls (tracing,
compiling) are timed on their own and left out of both. Figures go to the console and to
`--out` (bench.jsonl, one JSON object per framework and phase; bench.md, the table with the
machine, date and command).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from typing import Sequence

import numpy as np

from common.commands.cli import (Parser, add_threads_flag, guarded, frameworks_arg, non_negative_int,
                                 path_arg, positive_float, positive_int)
from common.core.checks import PRECISIONS
from common.core.data import batches
from common.core.devices import add_device_flag, check_memory, cpu
from common.core.files import atomic_path, writable_dir
from common.frameworks import FRAMEWORKS, NAMES, load, module
from common.core.oracle import flops
from common.core.spec import PRESETS, get_spec
from common.core.tables import render

PHASES = ("infer", "train")  # infer first, so its peak RSS is its own
MIN_RATIO = 0.97  # the speed contract: the project's step at >= 0.97x the reference step
MARK = "BENCH "  # prefix of the worker's result lines on stdout


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="resnet-bench", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="d2l_resnet18", choices=sorted(PRESETS), help="preset")
    p.add_argument("--input-size", type=positive_int, default=96, help="image side in pixels")
    p.add_argument("--in-channels", type=positive_int, default=None, help="None: the preset's")
    p.add_argument("--num-classes", type=positive_int, default=None, help="None: the preset's")
    p.add_argument("--batch-size", type=positive_int, default=64, help="examples per step")
    p.add_argument("--phase", default="both", choices=("train", "infer", "both"),
                   help="which steps to measure")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help=f"comma-separated subset of {','.join(FRAMEWORKS)}")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="arithmetic")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile, XLA (jit_compile), Gluon static_alloc/static_shape")
    add_threads_flag(p)
    add_device_flag(p)
    p.add_argument("--steps", type=positive_int, default=2, help="steps per side in each round")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps per side after the first")
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds of A then B")
    p.add_argument("--timeout", type=positive_float, default=1800, help="seconds per framework process")
    p.add_argument("--out", type=path_arg, default="reports/bench", help="folder for bench.jsonl and bench.md")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    frameworks = frameworks_arg(p, args.frameworks, FRAMEWORKS)
    try:
        spec = bench_spec(args)
        flops(spec, args.input_size)  # too small an input is refused here
    except ValueError as err:
        p.error(str(err))
    check_memory(spec, args.batch_size, args.input_size, args.phase != "infer",
                 f"--batch-size {args.batch_size}, --input-size {args.input_size}")
    # The plain reference steps (resnet_<fw>/reference.py) build the common structure only.
    unusual = [what for what, there in (("an input BatchNorm", spec.input_bn),
                                        ("a stem without BatchNorm", not spec.stem.norm),
                                        ("a zero-padded stem pool", spec.stem.pool_zeros),
                                        ("strides in the last block", spec.stride_at != "first"))
               if there]
    if unusual:
        p.error(f"--arch: expected a preset the reference step can build, got {args.arch} "
                f"with {', '.join(unusual)}; bench one of the same depth instead (for example "
                f"resnet50 for keras_resnet50_v2)")
    return frameworks


def bench_spec(args):
    """The preset of --arch, with --in-channels and --num-classes where given."""
    overrides = {k: getattr(args, k) for k in ("in_channels", "num_classes")
                 if getattr(args, k) is not None}
    return get_spec(args.arch, **overrides)


# --- the worker: one framework, in its own process -------------------------------------------

def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _data_seconds(spec, batch_size: int, input_size: int, repeats: int = 5) -> float:
    """Time of the data pipeline per batch (median of `repeats` epochs of 4 batches): uint8
    28x28 images (the MNIST family's size) shuffled, gathered, scaled and resized to
    input_size, as the training loop gets them."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4 * batch_size, spec.in_channels, 28, 28), dtype=np.uint8)
    y = rng.integers(0, spec.num_classes, 4 * batch_size)
    times = [_timed(lambda i=i: list(batches(x, y, batch_size, input_size, seed=0, epoch=i))) / 4
             for i in range(repeats)]
    return float(np.median(times))


def measure(package, reference, spec, phase: str, args) -> dict:
    """One phase: the project's step (A, `package.Adapter`) and the reference step (B, the
    package's `reference` module), alternated."""
    from common.core.init import init_weights
    rng = np.random.default_rng(0)
    b, s = args.batch_size, args.input_size
    x = rng.random((b, spec.in_channels, s, s), dtype=np.float32)
    y = rng.integers(0, spec.num_classes, b)
    adapter = package.Adapter(spec, init_weights(spec, 0), precision=args.precision,
                              compile=args.compile, device=args.device)
    ours = (lambda: adapter.train_step(x, y)) if phase == "train" else (lambda: adapter.eval_step(x))
    # The reference on the same device, fed NumPy-made batches as the adapter is.
    ref = reference.make_step(spec, phase, b, s, precision=args.precision, compile=args.compile,
                              device=str(adapter.device))
    sides = {"ours": ours, "ref": ref}
    # reference.sync() waits for work a framework leaves running when a step returns (MXNet's
    # backward pass and update), so that none of it is charged to the other side.
    first = {name: _timed(lambda fn=fn: (fn(), reference.sync())) for name, fn in sides.items()}
    for _ in range(args.warmup):
        for fn in sides.values():
            fn()
    reference.sync()
    wall = {name: [] for name in sides}  # seconds per step, one entry per round
    cpu = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                fn()
            reference.sync()
            wall[name].append((time.perf_counter() - w0) / args.steps)
            cpu[name].append((time.process_time() - c0) / args.steps)
    out = {"phase": phase, "device": str(adapter.device), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "data_seconds": _data_seconds(spec, b, s)}
    for name in sides:
        median = float(np.median(wall[name]))
        out[name] = {"median_s": median, "min_s": float(min(wall[name])),
                     "max_s": float(max(wall[name])), "first_step_s": first[name],
                     "img_per_s": b / median, "img_per_cpu_s": b / float(np.mean(cpu[name])),
                     "rounds_s": wall[name], "rounds_cpu_s": cpu[name]}
    # Ratios of the two sides of the same round, which ran back to back, then their median:
    # drift of the host between rounds cancels out.
    out["ratio_wall"] = float(np.median(np.divide(wall["ref"], wall["ours"])))
    out["ratio_cpu"] = float(np.median(np.divide(cpu["ref"], cpu["ours"])))
    out["data_share"] = out["data_seconds"] / out["ours"]["median_s"]
    return out


def worker(framework: str, args) -> None:
    """Run in the framework's own process: print one MARK line of JSON per phase."""
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by MXNet (and OpenMP) on import
    package = load(framework)
    package.set_threads(args.threads)
    reference = module(framework, "reference")
    spec = bench_spec(args)
    # A GPU the framework does not see: one error row, before any measurement.
    try:
        module(framework, "devices").select(args.device)
    except ValueError as err:
        print(MARK + json.dumps({"phase": args.phase, "framework": framework,
                                 "error": str(err)}), flush=True)
        return
    probe = reference.matmul_gflops()
    phases = PHASES if args.phase == "both" else (args.phase,)
    for phase in phases:
        try:
            row = measure(package, reference, spec, phase, args)
        except (ValueError, NotImplementedError) as err:  # e.g. a precision a framework lacks
            row = {"phase": phase, "error": str(err)}
        row |= {"framework": framework, "matmul_gflops": probe, "version": reference.VERSION,
                "gflop_per_image": flops(spec, args.input_size, phase) / 1e9}
        print(MARK + json.dumps(row), flush=True)


# --- the driver: machine, load, one process per framework, the table --------------------------

def _busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot (all processes)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine() -> dict:
    """What the figures were measured on."""
    model, flags = cpu()
    flags = flags or frozenset()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu": model, "cores": os.cpu_count(), "features": [f for f in wanted if f in flags],
            "python": platform.python_version(), "system": platform.platform(terse=True),
            "date": datetime.date.today().isoformat()}


def worker_command(framework: str, args) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("in_channels", "num_classes")
             if getattr(args, k) is not None]
    flags += ["--arch", args.arch, "--input-size", str(args.input_size), "--batch-size",
             str(args.batch_size), "--phase", args.phase, "--precision", args.precision,
             "--threads", str(args.threads), "--steps", str(args.steps), "--warmup",
             str(args.warmup), "--rounds", str(args.rounds), "--device", args.device]
    flags += ["--compile"] if args.compile else []
    return [sys.executable, "-m", "common.commands.bench", "--worker", framework, *flags]


def run_framework(framework: str, args, log=print) -> list[dict]:
    """One framework's rows, from its own process, with the CPU that others used meanwhile."""
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    busy0, ours0, wall0 = _busy_seconds(), _children_cpu(), time.perf_counter()
    try:
        done = subprocess.run(worker_command(framework, args), env=env, capture_output=True,
                              text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return [{"framework": framework, "phase": args.phase,
                 "error": f"expected to finish within --timeout {args.timeout:g} s, did not"}]
    wall = time.perf_counter() - wall0
    others = max(0.0, (_busy_seconds() - busy0) - (_children_cpu() - ours0))
    rows = [json.loads(line[len(MARK):]) for line in done.stdout.splitlines()
            if line.startswith(MARK)]
    if done.returncode != 0 or not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [{"framework": framework, "phase": args.phase,
                 "error": f"expected exit status 0, got {done.returncode}: {tail[0]}"}]
    for row in rows:
        row["others_cpu_share"] = others / wall  # other processes' CPU, in cores, on average
    return rows


def finish(rows: list[dict]) -> list[dict]:
    """Add the share of the machine's FP32 peak: the best matrix-multiply probe of any
    framework's process is the machine's attainable peak."""
    peak = max((r.get("matmul_gflops", 0.0) for r in rows), default=0.0)
    for r in rows:
        r["peak_gflops"] = peak
        if "error" not in r and peak:
            r["peak_share"] = r["gflop_per_image"] * r["ours"]["img_per_s"] / peak
    return rows


HEADER = ["framework", "phase", "ms/step median (min-max)", "img/s", "img/CPU-s",
          "ref img/s", "ratio wall", "ratio CPU", f">= {MIN_RATIO}", "first step s",
          "GFLOP/img", "% FP32 peak", "peak RSS MiB", "data %"]


def table_rows(rows: list[dict]) -> list[list[object]]:
    out = []
    for r in rows:
        name = NAMES.get(r["framework"], r["framework"])
        if "error" in r:
            out.append([name, r["phase"], f"error: {r['error']}"] + [""] * (len(HEADER) - 3))
            continue
        o = r["ours"]
        ok = min(r["ratio_wall"], r["ratio_cpu"]) >= MIN_RATIO
        out.append([name, r["phase"],
                    f"{1e3 * o['median_s']:.1f} ({1e3 * o['min_s']:.1f}-{1e3 * o['max_s']:.1f})",
                    f"{o['img_per_s']:.1f}", f"{o['img_per_cpu_s']:.1f}",
                    f"{r['ref']['img_per_s']:.1f}", f"{r['ratio_wall']:.3f}",
                    f"{r['ratio_cpu']:.3f}", "yes" if ok else "NO",
                    f"{o['first_step_s']:.2f}", f"{r['gflop_per_image']:.3f}",
                    f"{100 * r['peak_share']:.1f}", f"{r['peak_rss_mib']:.0f}",
                    f"{100 * r['data_share']:.2f}"])
    return out


def notes(rows: list[dict], load: tuple[tuple[float, ...], tuple[float, ...]]) -> list[str]:
    probes = ", ".join(f"{NAMES.get(r['framework'])} {r['matmul_gflops']:.0f}" for r in rows
                       if r.get("phase") == rows[0].get("phase") and "matmul_gflops" in r)
    lines = [f"FP32 matrix-multiply probe, GFLOP/s per framework process: {probes}; the best is "
             f"taken as the machine's FP32 peak.",
             f"Load average (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in load[0])} at the "
             f"start, {', '.join(f'{v:.2f}' for v in load[1])} at the end."]
    busy = {r["framework"]: r["others_cpu_share"] for r in rows if "others_cpu_share" in r}
    noisy = {fw: share for fw, share in busy.items() if share > 0.1}
    if noisy:
        lines.append("WARNING: other processes used the CPU during the run ("
                     + ", ".join(f"{NAMES[fw]}: {share:.2f} cores on average"
                                 for fw, share in noisy.items())
                     + "); the wall-clock figures are disturbed, prefer img/CPU-s.")
    return lines


def markdown(rows: list[dict], args, info: dict, lines: list[str], command: str) -> str:
    settings = (f"{args.arch}, {args.input_size} px, batch {args.batch_size}, {args.precision}"
                f"{', compiled' if args.compile else ''}, {args.threads} thread(s), "
                f"{args.rounds} rounds of {args.steps} steps per side after {args.warmup} warm-up")
    versions = ", ".join(sorted({f"{NAMES[r['framework']]} {r['version']}" for r in rows
                                 if r.get("version")}))
    return (f"Machine: {info['cpu']}, {info['cores']} cores "
            f"({', '.join(info['features']) or 'no AVX-512'}), Python {info['python']}, "
            f"{versions}; {info['date']}.\n\nCommand: `{command}` ({settings}).\n\n"
            + render(HEADER, table_rows(rows), markdown=True) + "\n\n"
            + "\n".join(f"- {line}" for line in lines) + "\n")


def run(frameworks: Sequence[str], args, log=print) -> tuple[list[dict], list[str]]:
    """Every framework's rows (one process each) and the notes on peak and load."""
    load0, rows = os.getloadavg(), []
    for fw in frameworks:
        log(f"== {NAMES[fw]}: {shlex.join(worker_command(fw, args)[1:])}")
        rows += run_framework(fw, args, log)
    return finish(rows), notes(rows, (load0, os.getloadavg()))


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args)
        return 0
    frameworks = check_args(p, args)
    out = writable_dir(args.out)  # before minutes of measuring, not after
    rows, lines = run(frameworks, args)
    info = machine()
    command = shlex.join(["python", "-m", "common.commands.bench", *(sys.argv[1:] if argv is None else argv)])
    print(render(HEADER, table_rows(rows)))
    for line in lines:
        print(line)
    with atomic_path(out / "bench.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r | {"machine": info, "command": command}) + "\n"
                               for r in rows))
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(markdown(rows, args, info, lines, command))
    print(f"results: {out / 'bench.jsonl'}, table: {out / 'bench.md'}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
