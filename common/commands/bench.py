"""resnet-bench: each framework's own training and inference step against a plain step written
directly in that framework, so that the speed column of `compare` is shown to measure the
frameworks and not this project.

    python -m common.commands.bench                                   # d2l_resnet18, 96 px, batch 64
    python -m common.commands.bench --input-size 32 --batch-size 128 --threads 1 --phase train

Like timm's benchmark.py, for four frameworks. Each framework runs in its own process. In it,
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
import itertools
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

from common.commands.cli import (Parser, add_threads_flag, description, frameworks_arg, guarded,
                                 non_negative_int, path_arg, positive_float, positive_int)
from common.core.checks import PRECISIONS
from common.core.data import batches
from common.core.devices import add_device_flag, check_memory, cpu
from common.core.files import atomic_path, writable_dir
from common.frameworks import FRAMEWORKS, NAMES, load, module
from common.core.oracle import flops
from common.core.spec import PRESETS, get_spec
from common.core.tables import render
from common.commands.plots import plot_sweep

PHASES = ("infer", "train")  # infer first, so its peak RSS is its own
PHASE_OF = {"latency": "infer"}  # what a --latency call computes
MIN_RATIO = 0.97  # the speed contract: the project's step at >= 0.97x the reference step
MARK = "BENCH "  # prefix of the worker's result lines on stdout


LATENCY_CALLS = 200  # timed single-image calls of --latency, after warm-up
LATENCY_WARMUP = 20  # untimed calls before them (at least; --warmup where larger)


TOLERANCE = 1e-3  # --tuned: a configuration's logits within this of the fp32 default's


def batch_sizes_arg(text: str) -> tuple[int, ...]:
    """`--batch-sizes`' argparse type: distinct positive integers, comma-separated."""
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"expected distinct positive integers, comma-separated "
                                         f"(for example 1,8,32), got {text!r}")
    return sizes


def batch_sizes(args) -> tuple[int, ...]:
    """The batch sizes a run measures: --batch-sizes, else --batch-size alone (1 for --latency)."""
    if getattr(args, "latency", False):
        return (1,)
    return getattr(args, "batch_sizes", None) or (args.batch_size,)


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="resnet-bench", description=description(__doc__))
    p.add_argument("--arch", default="d2l_resnet18", choices=sorted(PRESETS), help="preset")
    p.add_argument("--input-size", type=positive_int, default=96, help="image side in pixels")
    p.add_argument("--in-channels", type=positive_int, default=None, help="None: the preset's")
    p.add_argument("--num-classes", type=positive_int, default=None, help="None: the preset's")
    p.add_argument("--batch-size", type=positive_int, default=64, help="examples per step")
    p.add_argument("--batch-sizes", type=batch_sizes_arg, default=None,
                   help="a sweep in one command, e.g. 1,8,32,64,128,256: every framework and "
                        "phase at each batch size (in place of --batch-size), with sweep.png")
    p.add_argument("--latency", action="store_true",
                   help="in place of the throughput phases: single-image inference, each call "
                        "timed (p50, p90, p99), after warm-up")
    p.add_argument("--latency-calls", type=positive_int, default=LATENCY_CALLS,
                   help="timed calls for --latency")
    p.add_argument("--tuned", action="store_true",
                   help="in place of the adapter against the reference: every combination of "
                        "the framework's speed options (reference.SPEED_OPTIONS) on the plain "
                        "step, interleaved, the fastest within --tolerance of the fp32 default")
    p.add_argument("--tolerance", type=positive_float, default=TOLERANCE,
                   help="--tuned: largest |logits - fp32 default's| over max |fp32 logits|")
    p.add_argument("--phase", default="both", choices=("train", "infer", "both"),
                   help="which steps to measure")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help=f"comma-separated subset of {','.join(FRAMEWORKS)}")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="arithmetic")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile, XLA (jit_compile), Gluon static_alloc/static_shape")
    p.add_argument("--channels-last", action="store_true",
                   help="both steps channels-last in memory (PyTorch's torch.channels_last; "
                        "TensorFlow and JAX are always, MXNet never)")
    add_threads_flag(p)
    add_device_flag(p)
    p.add_argument("--steps", type=positive_int, default=2, help="steps per side in each round")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps per side after the first")
    p.add_argument("--rounds", type=positive_int, default=5, help="rounds of A then B")
    p.add_argument("--timeout", type=positive_float, default=1800, help="seconds per framework process")
    p.add_argument("--out", type=path_arg, default="reports/bench", help="folder for bench.jsonl and bench.md")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    # --tuned: the worker of one of reference.PROCESS_OPTIONS, started with its environment
    p.add_argument("--process-option", default=None, help=argparse.SUPPRESS)
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, ...]:
    frameworks = frameworks_arg(p, args.frameworks, FRAMEWORKS)
    given = [f for f, on in (("--latency", args.latency), ("--compile", args.compile),
                             ("--channels-last", args.channels_last),
                             (f"--precision {args.precision}", args.precision != "fp32")) if on]
    if args.tuned and given:
        p.error(f"--tuned: expected none of --latency, --compile, --channels-last, --precision "
                f"with it (it tries the speed options itself), got {' '.join(given)}")
    if args.latency and args.batch_sizes:
        p.error(f"--latency: expected no --batch-sizes with it (latency is one image a call), "
                f"got --batch-sizes {','.join(map(str, args.batch_sizes))}")
    try:
        spec = bench_spec(args)
        flops(spec, args.input_size)  # too small an input is refused here
    except ValueError as err:
        p.error(str(err))
    flag = "--batch-sizes" if args.batch_sizes else "--batch-size"
    check_memory(spec, max(batch_sizes(args)), args.input_size,
                 args.phase != "infer" and not args.latency,
                 f"{flag} {max(batch_sizes(args))}, --input-size {args.input_size}")
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
                              compile=args.compile, channels_last=args.channels_last,
                              device=args.device)
    ours = (lambda: adapter.train_step(x, y)) if phase == "train" else (lambda: adapter.eval_step(x))
    # The reference on the same device, fed NumPy-made batches as the adapter is.
    ref = reference.make_step(spec, phase, b, s, precision=args.precision, compile=args.compile,
                              channels_last=args.channels_last, device=str(adapter.device))
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


def latency(package, reference, spec, args) -> dict:
    """Single-image inference through the project's step (`Adapter.eval_step`: NumPy in,
    NumPy out, so each call has finished when it returns): the first call apart, then
    LATENCY_WARMUP untimed calls (or --warmup, if more), then --latency-calls calls, each timed."""
    from common.core.init import init_weights
    x = np.random.default_rng(0).random((1, spec.in_channels, args.input_size, args.input_size),
                                        dtype=np.float32)
    adapter = package.Adapter(spec, init_weights(spec, 0), precision=args.precision,
                              compile=args.compile, channels_last=args.channels_last,
                              device=args.device)
    first = _timed(lambda: adapter.eval_step(x))
    for _ in range(max(args.warmup, LATENCY_WARMUP)):
        adapter.eval_step(x)
    calls = [_timed(lambda: adapter.eval_step(x)) for _ in range(args.latency_calls)]
    return {"phase": "latency", "batch_size": 1, "device": str(adapter.device),
            "mode": reference.call_mode(args.compile), **latency_figures(calls),
            "first_call_s": first}


def latency_figures(seconds: Sequence[float]) -> dict:
    """Percentiles (p50, p90, p99), mean, min and max of per-call times, in milliseconds."""
    ms = 1e3 * np.asarray(seconds, dtype=float)
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"calls": len(ms), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max())}


def configurations(options: dict[str, dict]) -> list[tuple[str, ...]]:
    """Every combination of the option names, the empty one (the fp32 default) first."""
    return [c for n in range(len(options) + 1) for c in itertools.combinations(options, n)]


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def tuned(reference, spec, phase: str, args) -> list[dict]:
    """--tuned, one phase: the plain step (resnet_<fw>/reference.py) in every combination of
    its framework's SPEED_OPTIONS, on the same weights and batch (each make_step seeds both),
    timed in rounds that visit every configuration in turn, so drift hits all alike. Each
    configuration's inference logits are compared with the fp32 default's: the largest
    difference over the default's largest |logit|. A configuration that fails is a row with
    its error. The default's logits stay in its row (a list), for judge_across; in the process
    of a process option (args.process_option) every row keeps them, and is named with the
    option first."""
    b, s, dev = args.batch_size, args.input_size, args.device
    dev = "cpu" if dev == "auto" else dev
    steps, out = {}, {}
    for combo in configurations(reference.SPEED_OPTIONS):
        kwargs = {k: v for name in combo for k, v in reference.SPEED_OPTIONS[name].items()}
        name = " + ".join(combo) or "default (fp32)"
        try:
            infer = reference.make_step(spec, "infer", b, s, device=dev, **kwargs)
            logits = np.asarray(infer(), dtype=np.float32)
            steps[combo] = infer if phase == "infer" else reference.make_step(
                spec, phase, b, s, device=dev, **kwargs)
            first = _timed(lambda fn=steps[combo]: (fn(), reference.sync()))
            out[combo] = {"phase": phase, "config": name, "options": list(combo),
                          "logits": logits, "first_step_s": first}
        except Exception as err:  # noqa: BLE001  an option this build or machine lacks
            # (a compiler, a bf16 kernel) fails in its own library's way: its row says why
            steps.pop(combo, None)
            out[combo] = {"phase": phase, "config": name, "options": list(combo),
                          "error": _first_line(err)}
    rebuilt(reference, spec, out.get(()), b, s, dev)
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    reference.sync()
    wall = {combo: [] for combo in steps}
    for _ in range(args.rounds):
        for combo, fn in steps.items():
            w0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            reference.sync()
            wall[combo].append((time.perf_counter() - w0) / args.steps)
    logits = {combo: r["logits"] for combo, r in out.items() if "logits" in r}
    rows = judge(list(out.values()), wall, b, args.tolerance)
    option = getattr(args, "process_option", None)
    for combo, r in out.items():  # the rows judge returned
        if combo in logits and (option or not combo):
            r["logits"] = logits[combo].tolist()
        if option:
            r |= {"config": " + ".join((option, *combo)), "options": [option, *combo],
                  "process_option": option}
    return rows


def rebuilt(reference, spec, default: dict | None, b: int, s: int, dev: str) -> None:
    """The fp32 default built a second time: its logits must equal the first build's, or the
    configurations were not compared on the same weights and batch (the difference is kept
    in the default's row, and the verdict warns)."""
    if default is None or "logits" not in default:
        return
    again = np.asarray(reference.make_step(spec, "infer", b, s, device=dev)(), dtype=np.float32)
    scale = float(np.abs(default["logits"]).max()) or 1.0
    default["rebuilt_difference"] = float(np.abs(again - default["logits"]).max()) / scale


def judge(rows: list[dict], wall: dict[tuple[str, ...], list[float]], batch: int,
          tolerance: float) -> list[dict]:
    """Each configuration's speed against the default's (median of the per-round ratios), its
    logits' difference, whether it is within the tolerance, and the fastest that is: "best"."""
    base = next((r["logits"] for r in rows if not r["options"] and "logits" in r), None)
    for r in rows:
        logits, times = r.pop("logits", None), wall.get(tuple(r["options"]))
        if "error" in r or not times:
            continue
        r |= {"median_s": float(np.median(times)), "img_per_s": batch / float(np.median(times)),
              "rounds_s": times, "tolerance": tolerance}
        if base is not None and wall.get(()):
            scale = float(np.abs(base).max()) or 1.0
            r["difference"] = float(np.abs(logits - base).max()) / scale
            r["speedup"] = float(np.median(np.divide(wall[()], times)))
            r["within"] = r["difference"] <= tolerance
    fit = [r for r in rows if r.get("within")]
    if fit:
        max(fit, key=lambda r: r["speedup"])["best"] = True
    return rows


ACROSS = " (separate process, not interleaved)"  # said beside a speedup across processes


def judge_across(rows: list[dict]) -> list[dict]:
    """--tuned with process options: each row of a process option's own process, judged
    against the fp32 default of the main process (same framework, phase and batch) where no
    rounds could interleave them. Its logits' difference is taken from that default's logits
    (same seeded weights and batch); its speedup is its interleaved speedup over its own
    process's default times (main default median / its default's median), marked
    "across_processes". The fastest within the tolerance of either process is crowned. The
    logits leave every row."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if kind(r) == "tuned":
            groups.setdefault((r["framework"], r["phase"], r.get("batch_size")), []).append(r)
    for group in groups.values():
        extra = [r for r in group if "process_option" in r]
        if not extra:
            continue
        main = next((r for r in group if r.get("options") == [] and "median_s" in r
                     and "logits" in r), None)
        defaults = {r["process_option"]: r for r in extra
                    if r["options"] == [r["process_option"]] and "median_s" in r}
        for r in group:
            r.pop("best", None)
        for r in extra:
            # judge's figures in its own process are against its own default: not the fp32 one
            own = r.pop("speedup", None)
            for key in ("difference", "within"):
                r.pop(key, None)
            base = defaults.get(r["process_option"])
            if own is None or main is None or base is None or "logits" not in r:
                continue
            r["own_speedup"] = own
            scale = float(np.abs(main["logits"]).max()) or 1.0
            r["difference"] = float(np.abs(np.subtract(r["logits"], main["logits"])).max()) / scale
            r["speedup"] = own * main["median_s"] / base["median_s"]
            r["within"] = r["difference"] <= r["tolerance"]
            r["across_processes"] = True
        fit = [r for r in group if r.get("within")]
        if fit:
            max(fit, key=lambda r: r["speedup"])["best"] = True
    for r in rows:
        r.pop("logits", None)
    return rows


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
    option = args.process_option
    if option is not None and not args.tuned:
        raise ValueError(f"--process-option: expected it with --tuned, got {option!r} without")
    if option is not None:
        env = reference.PROCESS_OPTIONS.get(option)
        unset = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
        if env is None or unset:  # read when the framework loaded: the driver must set it
            print(MARK + json.dumps({
                "phase": args.phase, "framework": framework, "config": option,
                "options": [option], "process_option": option,
                "error": f"--process-option: expected one of {sorted(reference.PROCESS_OPTIONS)} "
                         f"with its environment set when the process starts, got {option!r}"
                         + (f" without {unset}" if unset else "")}), flush=True)
            return
    # The main process of --tuned names the process options, for the driver to start.
    named = {"process_options": reference.PROCESS_OPTIONS} if args.tuned and not option else {}
    probe, libraries = reference.matmul_gflops(), reference.kernel_libraries()
    phases = ("latency",) if args.latency else PHASES if args.phase == "both" else (args.phase,)
    for b, phase in ((b, phase) for b in batch_sizes(args) for phase in phases):
        at = argparse.Namespace(**vars(args) | {"batch_size": b})
        try:
            rows = (tuned(reference, spec, phase, at) if args.tuned
                    else [latency(package, reference, spec, at)] if phase == "latency"
                    else [measure(package, reference, spec, phase, at)])
        except (ValueError, NotImplementedError) as err:  # e.g. a precision a framework lacks
            rows = [{"phase": phase, "error": str(err)}]
        for row in rows:
            emit(row | named, framework, b, probe, reference, libraries, flops(
                spec, args.input_size, PHASE_OF.get(phase, phase)) / 1e9)


def emit(row: dict, framework: str, b: int, probe: float, reference, libraries: dict,
         gflop_per_image: float) -> None:
    """One result line of the worker, MARK and JSON, with what every row carries."""
    row |= {"framework": framework, "batch_size": b, "matmul_gflops": probe, "version": reference.VERSION,
            "libraries": libraries, "gflop_per_image": gflop_per_image}
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


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")  # that matter


def cpu_flags_line() -> str:
    """The CPU flags that decide which kernels the libraries pick (AVX-512, its bf16, AMX), each
    present or absent, as common.core.devices reads them from /proc/cpuinfo."""
    flags = cpu()[1]
    if flags is None:
        return "CPU flags: unknown (/proc/cpuinfo could not be read)"
    return "CPU flags: " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)


def libraries_line(framework: str, version: str, libraries: dict[str, str]) -> str:
    """One framework's version and the kernel libraries under it, as its package reports them."""
    return (f"{NAMES.get(framework, framework)} {version}: "
            + "; ".join(f"{name} {what}" for name, what in libraries.items()))


def what_ran(frameworks: Sequence[str], rows: Sequence[dict] = ()) -> list[str]:
    """Each framework's version and kernel libraries, then the CPU flags line: from the bench
    rows (each framework's own process) where given, else from this process; a line more for
    each process option's process (--tuned)."""
    found = {r["framework"]: (r["version"], r["libraries"]) for r in rows
             if "libraries" in r and "process_option" not in r}
    options = {(r["framework"], r["process_option"]): (r["version"], r["libraries"])
               for r in rows if "libraries" in r and "process_option" in r}
    lines = []
    for fw in frameworks:
        if fw not in found and rows:
            lines.append(f"{NAMES.get(fw, fw)}: not reported (its bench process failed)")
            continue
        if fw not in found:
            reference = module(fw, "reference")
            found[fw] = (reference.VERSION, reference.kernel_libraries())
        lines.append(libraries_line(fw, *found[fw]))
        lines += [libraries_line(fw, f"{version}, process option {name}", libraries)
                  for (f, name), (version, libraries) in options.items() if f == fw]
    return lines + [cpu_flags_line()]


def worker_command(framework: str, args) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("in_channels", "num_classes")
             if getattr(args, k) is not None]
    flags += ["--arch", args.arch, "--input-size", str(args.input_size), "--batch-size",
             str(args.batch_size), "--phase", args.phase, "--precision", args.precision,
             "--threads", str(args.threads), "--steps", str(args.steps), "--warmup",
             str(args.warmup), "--rounds", str(args.rounds), "--device", args.device]
    flags += ["--compile"] if args.compile else []
    flags += ["--channels-last"] if args.channels_last else []
    if getattr(args, "batch_sizes", None):
        flags += ["--batch-sizes", ",".join(map(str, args.batch_sizes))]
    if getattr(args, "latency", False):
        flags += ["--latency", "--latency-calls", str(args.latency_calls)]
    if getattr(args, "tuned", False):
        flags += ["--tuned", "--tolerance", repr(args.tolerance)]
    if getattr(args, "process_option", None):
        flags += ["--process-option", args.process_option]
    return [sys.executable, "-m", "common.commands.bench", "--worker", framework, *flags]


def failed(framework: str, args, error: str) -> dict:
    """The row of a worker process that gave none; in a process option's process (--tuned),
    a row of the tuned table, like a speed option this build lacks."""
    option = getattr(args, "process_option", None)
    row = {"framework": framework, "phase": args.phase, "error": error}
    return row | ({"config": option, "options": [option], "process_option": option}
                  if option else {})


def run_framework(framework: str, args, log=print, extra_env: dict | None = None) -> list[dict]:
    """One framework's rows, from its own process (with `extra_env` added to this one's), with
    the CPU that others used meanwhile."""
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env |= extra_env or {}
    busy0, ours0, wall0 = _busy_seconds(), _children_cpu(), time.perf_counter()
    try:
        done = subprocess.run(worker_command(framework, args), env=env, capture_output=True,
                              text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return [failed(framework, args,
                       f"expected to finish within --timeout {args.timeout:g} s, did not")]
    wall = time.perf_counter() - wall0
    others = max(0.0, (_busy_seconds() - busy0) - (_children_cpu() - ours0))
    rows = [json.loads(line[len(MARK):]) for line in done.stdout.splitlines()
            if line.startswith(MARK)]
    if done.returncode != 0 or not rows:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return [failed(framework, args,
                       f"expected exit status 0, got {done.returncode}: {tail[0]}")]
    for row in rows:
        row["others_cpu_share"] = others / wall  # other processes' CPU, in cores, on average
    return rows


def finish(rows: list[dict]) -> list[dict]:
    """Add the share of the machine's FP32 peak: the best matrix-multiply probe of any
    framework's process is the machine's attainable peak."""
    peak = max((r.get("matmul_gflops", 0.0) for r in rows), default=0.0)
    for r in rows:
        r["peak_gflops"] = peak
        speed = r["ours"]["img_per_s"] if "ours" in r else r.get("img_per_s")  # --tuned's
        if "error" not in r and speed and peak:
            r["peak_share"] = r["gflop_per_image"] * speed / peak
    return rows


HEADER = ["framework", "phase", "batch", "ms/step median (min-max)", "img/s", "img/CPU-s",
          "ref img/s", "ratio wall", "ratio CPU", f">= {MIN_RATIO}", "first step s",
          "GFLOP/img", "% FP32 peak", "peak RSS MiB", "data %"]


NOISE = 1 - MIN_RATIO  # a figure whose rounds moved more than this is marked in the table


def moved(rounds: Sequence[float]) -> str:
    """" (moved N% between rounds)" where the rounds' spread, (max - min) / median, exceeds
    the contract's 3%: said beside the figure it disturbs, not only in a warning line."""
    if len(rounds) < 2:
        return ""
    spread = (max(rounds) - min(rounds)) / float(np.median(rounds))
    return f" (moved {spread:.0%} between rounds)" if spread > NOISE else ""


def kind(row: dict) -> str:
    """Which table a row belongs to: "latency", "tuned" or "throughput"."""
    return "latency" if row["phase"] == "latency" else "tuned" if "config" in row else "throughput"


def table_rows(rows: list[dict]) -> list[list[object]]:
    """The throughput table: one row per framework, phase and batch size."""
    out = []
    for r in rows:
        name = NAMES.get(r["framework"], r["framework"])
        if kind(r) != "throughput":
            continue
        if "error" in r:
            out.append([name, r["phase"], r.get("batch_size", ""), f"error: {r['error']}"]
                       + [""] * (len(HEADER) - 4))
            continue
        o = r["ours"]
        ok = min(r["ratio_wall"], r["ratio_cpu"]) >= MIN_RATIO
        out.append([name, r["phase"], r.get("batch_size", ""),
                    f"{1e3 * o['median_s']:.1f} ({1e3 * o['min_s']:.1f}-{1e3 * o['max_s']:.1f})"
                    + moved(o.get("rounds_s", ())),
                    f"{o['img_per_s']:.1f}", f"{o['img_per_cpu_s']:.1f}",
                    f"{r['ref']['img_per_s']:.1f}" + moved(r["ref"].get("rounds_s", ())), f"{r['ratio_wall']:.3f}",
                    f"{r['ratio_cpu']:.3f}", "yes" if ok else "NO",
                    f"{o['first_step_s']:.2f}", f"{r['gflop_per_image']:.3f}",
                    f"{100 * r['peak_share']:.1f}", f"{r['peak_rss_mib']:.0f}",
                    f"{100 * r['data_share']:.2f}"])
    return out


LATENCY_HEADER = ["framework", "per call", "calls", "p50 ms", "p90 ms", "p99 ms", "mean ms",
                  "min-max ms", "first call s"]


def latency_rows(rows: list[dict]) -> list[list[object]]:
    """The --latency table: one row per framework, the per-call mode stated."""
    out = []
    for r in rows:
        if r["phase"] != "latency":
            continue
        name = NAMES.get(r["framework"], r["framework"])
        if "error" in r:
            out.append([name, f"error: {r['error']}"] + [""] * (len(LATENCY_HEADER) - 2))
            continue
        out.append([name, r["mode"], r["calls"], f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                    f"{r['p99_ms']:.2f}", f"{r['mean_ms']:.2f}",
                    f"{r['min_ms']:.2f}-{r['max_ms']:.2f}", f"{r['first_call_s']:.2f}"])
    return out


def sweep(rows: list[dict]) -> tuple[list[str], list[list[object]]]:
    """The --batch-sizes table: img/s per framework and phase (rows) and batch size (columns)."""
    sizes = sorted({r["batch_size"] for r in rows if kind(r) == "throughput"})
    cells: dict[tuple[str, str], dict[int, str]] = {}
    for r in rows:
        if kind(r) == "throughput":
            cells.setdefault((r["framework"], r["phase"]), {})[r["batch_size"]] = (
                "error" if "error" in r else f"{r['ours']['img_per_s']:.1f}")
    return (["framework", "phase", *(f"img/s at {b}" for b in sizes)],
            [[NAMES.get(fw, fw), phase, *(by.get(b, "") for b in sizes)]
             for (fw, phase), by in cells.items()])


def sweep_series(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(batch size, img/s) per "framework phase", for plots.plot_sweep."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if kind(r) == "throughput" and "error" not in r:
            series.setdefault(f"{NAMES.get(r['framework'], r['framework'])} {r['phase']}",
                              []).append((r["batch_size"], r["ours"]["img_per_s"]))
    return series


def tables(rows: list[dict], markdown: bool = False) -> str:
    """Every table the rows call for: throughput, the sweep (over more than one batch size),
    latency."""
    parts = []
    if any(kind(r) == "throughput" for r in rows):
        parts.append(render(HEADER, table_rows(rows), markdown=markdown))
    if len({r.get("batch_size") for r in rows if kind(r) == "throughput"}) > 1:
        parts.append(render(*sweep(rows), markdown=markdown)
                     + ("\n\n![img/s per batch size](sweep.png)" if markdown else ""))
    if any(r["phase"] == "latency" for r in rows):
        parts.append(render(LATENCY_HEADER, latency_rows(rows), markdown=markdown))
    if any(kind(r) == "tuned" for r in rows):
        parts.append(render(TUNED_HEADER, tuned_rows(rows), markdown=markdown) + "\n\n"
                     + "\n".join(("- " if markdown else "") + line for line in verdicts(rows)))
    return "\n\n".join(parts)


TUNED_HEADER = ["framework", "phase", "batch", "configuration", "ms/step", "img/s",
                "x default", "% FP32 peak", "logit difference", "within tolerance",
                "first step s"]


def tuned_rows(rows: list[dict]) -> list[list[object]]:
    """The --tuned table: every configuration of every framework; the fastest within the
    tolerance marked "fastest"."""
    out = []
    for r in rows:
        if kind(r) != "tuned":
            continue
        head = [NAMES.get(r["framework"], r["framework"]), r["phase"], r.get("batch_size", ""),
                r["config"]]
        if "error" in r or "median_s" not in r:
            out.append(head + [f"error: {r.get('error', 'not timed')}"]
                       + [""] * (len(TUNED_HEADER) - 5))
            continue
        within = r.get("within")
        out.append(head + [f"{1e3 * r['median_s']:.1f}" + moved(r.get("rounds_s", ())),
                           f"{r['img_per_s']:.1f}",
                           _fmt(r.get("speedup"), ".2f")
                           + (ACROSS if r.get("across_processes") else ""),
                           _fmt(100 * r["peak_share"] if "peak_share" in r else None, ".1f"),
                           _fmt(r.get("difference"), ".1e"),
                           ("yes, fastest" if r.get("best") else "yes") if within
                           else "NO (not crowned)" if within is False else "n/a",
                           f"{r['first_step_s']:.2f}"])
    return out


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def times(row: dict) -> str:
    """A configuration's speedup, "1.05x", and where it was not interleaved with the default,
    "1.05x (separate process, not interleaved)"."""
    return f"{row['speedup']:.2f}x" + (ACROSS if row.get("across_processes") else "")


def verdicts(rows: list[dict]) -> list[str]:
    """Per framework, phase and batch: which options won (the fastest configuration within the
    tolerance, and by how much), and the options whose numerics were beyond it."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if kind(r) == "tuned":
            groups.setdefault((r["framework"], r["phase"], r.get("batch_size")), []).append(r)
    lines = []
    for (fw, phase, b), group in groups.items():
        tolerance = next((r["tolerance"] for r in group if "tolerance" in r), None)
        best = next((r for r in group if r.get("best")), None)
        beyond = [r for r in group if r.get("within") is False]
        failed = [r for r in group if "error" in r]
        line = f"{NAMES.get(fw, fw)} {phase}, batch {b}: "
        if best is None:
            line += "no configuration measured"
        elif not best["options"]:
            line += f"the fp32 default is the fastest within {tolerance:g}"
        else:
            line += (f"won: {best['config']}, {times(best)} the fp32 default "
                     f"(logits within {best['difference']:.1e} of its scale, tolerance "
                     f"{tolerance:g})")
        if best is not None and "peak_share" in best:
            line += f", {100 * best['peak_share']:.1f}% of the FP32 peak"
        if beyond:
            line += "; beyond the tolerance, not crowned: " + ", ".join(
                f"{r['config']} ({r['difference']:.1e}, {times(r)})" for r in beyond)
        if failed:
            line += "; failed: " + ", ".join(r["config"] for r in failed)
        again = max((r.get("rebuilt_difference", 0.0) for r in group), default=0.0)
        if tolerance is not None and again > tolerance:
            line += (f"; WARNING: the fp32 default built twice differs by {again:.1e}: the "
                     f"options were not compared on the same weights")
        lines.append(line)
    return lines


def notes(rows: list[dict], load: tuple[tuple[float, ...], tuple[float, ...]]) -> list[str]:
    probed = {r["framework"]: r["matmul_gflops"] for r in rows if "matmul_gflops" in r}
    probes = ", ".join(f"{NAMES.get(fw)} {gflops:.0f}" for fw, gflops in probed.items())
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
    timing = (f"{args.latency_calls} timed single-image calls after "
              f"{max(args.warmup, LATENCY_WARMUP)} warm-up" if args.latency else
              f"{args.rounds} rounds of {args.steps} steps per side after {args.warmup} warm-up")
    settings = (f"{args.arch}, {args.input_size} px, batch "
                f"{','.join(map(str, batch_sizes(args)))}, {args.precision}"
                f"{', compiled' if args.compile else ''}"
                f"{', channels-last' if args.channels_last else ''}, {args.threads} thread(s), "
                f"{timing}"
                + (f"; --tuned: every combination of each framework's speed options, logits "
                   f"within {args.tolerance:g} of the fp32 default's scale" if args.tuned else ""))
    frameworks = list(dict.fromkeys(r["framework"] for r in rows))
    ran = what_ran(frameworks, rows)
    return (f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, "
            f"{info['system']}; {info['date']}.\n\nCommand: `{command}` ({settings}).\n\n"
            "What ran:\n\n" + "".join(f"- {line}\n" for line in ran) + "\n"
            + tables(rows, markdown=True) + "\n\n"
            + "\n".join(f"- {line}" for line in lines) + "\n")


def run(frameworks: Sequence[str], args, log=print) -> tuple[list[dict], list[str]]:
    """Every framework's rows (one process each) and the notes on peak and load."""
    load0, rows = os.getloadavg(), []
    for fw in frameworks:
        log(f"== {NAMES[fw]}: {shlex.join(worker_command(fw, args)[1:])}")
        ran = run_framework(fw, args, log)
        rows += ran
        # --tuned: a process per process option, with its environment (its main process named
        # them, so that this one need not import the framework).
        named = {name: env for r in ran for name, env in r.get("process_options", {}).items()}
        for name, env in named.items() if getattr(args, "tuned", False) else ():
            at = argparse.Namespace(**vars(args) | {"process_option": name})
            log(f"== {NAMES[fw]}, {name}: {' '.join(f'{k}={v}' for k, v in env.items())} "
                f"{shlex.join(worker_command(fw, at)[1:])}")
            rows += run_framework(fw, at, log, env)
    return finish(judge_across(rows)), notes(rows, (load0, os.getloadavg()))


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
    print(tables(rows))
    if len(batch_sizes(args)) > 1:
        plot_sweep(sweep_series(rows), out / "sweep.png",
                   f"{args.arch} at {args.input_size} px, {args.precision}")
    for line in what_ran(frameworks, rows) + lines:
        print(line)
    with atomic_path(out / "bench.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r | {"machine": info, "command": command}) + "\n"
                               for r in rows))
    with atomic_path(out / "bench.md") as tmp:
        tmp.write_text(markdown(rows, args, info, lines, command))
    print(f"results: {out / 'bench.jsonl'}, table: {out / 'bench.md'}")
    # A speed option this build lacks is a row of --tuned's table, not a failure of the run.
    return 1 if any("error" in r and not r.get("options") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
