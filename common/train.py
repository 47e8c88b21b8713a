"""One training loop for three frameworks, driving a small adapter per framework.

    python -m resnet_torch.train --dataset digits --epochs 3 --resize 32
    python -m resnet_tf.train    --dataset digits --epochs 3 --resize 32   (same flags)
    python -m resnet_mx.train    --dataset digits --epochs 3 --resize 32

Defaults follow d2l classic: Fashion-MNIST, SGD, lr 0.05, batch 256, 10 epochs, resize 96.
A run folder (--out) holds metrics.jsonl, checkpoint.safetensors (written atomically after every
epoch), weights.safetensors (canonical, loadable by any framework), curves.png and run.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from common.cli import Parser
from common.checks import PRECISIONS
from common.data import DATASETS, DataError, Dataset, batches, load_dataset
from common.files import atomic_path
from common.frameworks import FRAMEWORKS, NAMES, load
from common.init import INIT_CHOICES, init_weights
from common.optim import OPTIMIZERS, OptimizerConfig
from common.plots import plot_curves
from common.spec import PRESETS, get_spec
from common.weights import WeightsError, save_weights

CHECKPOINT, WEIGHTS, METRICS, RUN, CURVES = ("checkpoint.safetensors", "weights.safetensors",
                                             "metrics.jsonl", "run.json", "curves.png")
# Flags that must not change when a run is resumed (--epochs may grow; --out, --resume,
# --threads, --compile and --data-dir are about where and how, not what).
RUN_DEFINING = ("arch", "dataset", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                "resize", "limit", "seed", "init", "precision")


def parser(prog: str) -> argparse.ArgumentParser:
    """The flags shared by every train script and by compare."""
    p = Parser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="d2l_resnet18", choices=sorted(PRESETS),
                   help="preset (README, Presets)")
    p.add_argument("--dataset", default="fashion_mnist", choices=DATASETS,
                   help="digits and mnist5k are embedded (no network)")
    p.add_argument("--data-dir", default=None, help="where data files are (or go)")
    p.add_argument("--epochs", type=int, default=10, help="epochs to train")
    p.add_argument("--batch-size", type=int, default=256, help="examples per step")
    p.add_argument("--lr", type=float, default=0.05, help="learning rate")
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="optimiser")
    p.add_argument("--momentum", type=float, default=0.0, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay")
    p.add_argument("--resize", type=int, default=96, help="image side after resizing; 0 keeps it")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    p.add_argument("--init", default="common", choices=INIT_CHOICES,
                   help="common: the shared seeded NumPy init; framework: the framework's own")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="CPU threads for the framework; all cores by default, the fastest "
                        "measured (README, Performance)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16: torch.autocast, Keras mixed_bfloat16, MXNet AMP; weights stay "
                        "float32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile, XLA (jit_compile), Gluon static_alloc/static_shape")
    p.add_argument("--out", default=None, help="run folder; None: runs/<framework>")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad flags and impossible combinations: a parser error naming expected and given."""
    for flag in ("epochs", "batch_size", "threads"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: expected a positive integer, got {getattr(args, flag)}")
    if args.resize < 0:
        p.error(f"--resize: expected 0 (keep) or a positive size, got {args.resize}")
    if args.seed < 0:
        p.error(f"--seed: expected an integer >= 0, got {args.seed}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit: expected a positive number of examples, got {args.limit}")
    try:
        OptimizerConfig(args.optimizer, args.lr, args.momentum, args.weight_decay)
    except ValueError as err:
        p.error(str(err))


def optimizer_config(args: argparse.Namespace) -> OptimizerConfig:
    return OptimizerConfig(args.optimizer, args.lr, args.momentum, args.weight_decay)


class StepClock:
    """Seconds and examples of the steps of one process, with its first step (where a framework
    traces or compiles its graph) kept apart, so that examples/sec is the steady speed."""

    def __init__(self):
        self.first: float | None = None
        self.seconds, self.examples = 0.0, 0

    def time(self, fn, n: int):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        if self.first is None:
            self.first = dt
        else:
            self.seconds, self.examples = self.seconds + dt, self.examples + n
        return out

    def rate(self) -> float | None:
        return self.examples / self.seconds if self.seconds else None


def evaluate(adapter, x: np.ndarray, y: np.ndarray, batch_size: int, resize: int | None,
             clock: StepClock | None = None) -> float:
    """Accuracy in inference mode (running BatchNorm statistics); `clock` times the steps."""
    clock = clock or StepClock()
    correct = sum(int((clock.time(lambda: adapter.eval_step(xb), len(yb)).argmax(1) == yb).sum())
                  for xb, yb in batches(x, y, batch_size, resize))
    return correct / len(y)


class Progress:
    """A one-line progress bar on a terminal; silent when stderr is a file or a pipe."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.on = total, label, sys.stderr.isatty()

    def update(self, done: int, loss: float) -> None:
        if self.on:
            bar = "#" * (20 * done // self.total)
            sys.stderr.write(f"\r{self.label} [{bar:<20}] {done}/{self.total} loss {loss:.3f}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.on:
            sys.stderr.write("\r" + " " * 72 + "\r")


def _write_text_atomically(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_checkpoint(out: Path, adapter, epoch: int, history: list[dict], config: dict) -> None:
    """Weights, optimiser state and history in one safetensors file, written then renamed."""
    from safetensors.numpy import save_file
    arrays = {f"model/{k}": v for k, v in adapter.get_weights().items()}
    arrays |= {f"optimizer/{k}": v for k, v in adapter.optimizer_state().items()}
    meta = {"epoch": str(epoch), "history": json.dumps(history), "config": json.dumps(config),
            "framework": adapter.framework}
    with atomic_path(out / CHECKPOINT) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=meta)


def load_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """(weights, optimiser state, metadata) from a checkpoint file; a damaged or foreign file
    is a WeightsError that names it."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors' own errors for a bad file
        raise WeightsError(f"checkpoint {path}: expected a safetensors file, could not read it "
                           f"({type(err).__name__}: {str(err)[:200]}); is it truncated?") from None
    needed = ("epoch", "history", "config", "framework")
    if not meta or any(k not in meta for k in needed):
        raise WeightsError(f"checkpoint {path}: expected metadata {', '.join(needed)}, got "
                           f"{', '.join(sorted(meta or {})) or 'none'}; it is not a checkpoint "
                           f"of this project's train scripts")
    model = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    opt = {k[10:]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    return model, opt, meta


def train(framework: str, args: argparse.Namespace, data: Dataset | None = None,
          log=print) -> dict:
    """Train one framework as the flags say; returns the run summary (also in run.json)."""
    module = load(framework)
    module.set_threads(args.threads)
    data = (data or load_dataset(args.dataset, args.data_dir)).limit(args.limit)
    spec = get_spec(args.arch, in_channels=data.in_channels, num_classes=data.num_classes)
    out = Path(args.out or f"runs/{framework}")
    out.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(args, k) for k in RUN_DEFINING}
    resize = args.resize or None

    history: list[dict] = []
    start = 0
    ckpt = out / CHECKPOINT
    if args.resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: expected a checkpoint at {ckpt}, found none")
        weights, opt_state, meta = load_checkpoint(ckpt)
        saved = json.loads(meta["config"])
        changed = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
        if meta.get("framework") != framework or changed:
            what = "; ".join(f"--{k.replace('_', '-')}: expected {a!r}, got {b!r}"
                             for k, (a, b) in changed.items()) or \
                f"framework: expected {meta.get('framework')}, got {framework}"
            raise ValueError(f"--resume: the run in {out} was made with other settings: {what}")
        start, history = int(meta["epoch"]), json.loads(meta["history"])
    elif ckpt.exists():
        raise FileExistsError(f"--out: {out} already holds a run; pass --resume to continue it "
                              f"or choose another --out")
    else:
        weights, opt_state = None, {}
    if weights is None:
        if args.init == "common":
            weights = init_weights(spec, args.seed)
        else:
            weights = module.to_canonical(module.build(spec, init="framework"))
    adapter = module.Adapter(spec, weights, optimizer=optimizer_config(args),
                             precision=args.precision, compile=args.compile)
    if opt_state:
        adapter.set_optimizer_state(opt_state)

    n_train = len(data.train_y)
    steps = math.ceil(n_train / args.batch_size)
    if start >= args.epochs:
        log(f"{NAMES[framework]}: the run in {out} already has {start} of {args.epochs} epochs")
    # The first training and inference steps of this process (tracing, compiling) are timed
    # apart and left out of examples/sec.
    train_clock, eval_clock = StepClock(), StepClock()
    for epoch in range(start, args.epochs):
        progress = Progress(steps, f"epoch {epoch + 1}/{args.epochs}")
        loss_sum, correct = 0.0, 0
        seconds0, examples0 = train_clock.seconds, train_clock.examples
        for step, (xb, yb) in enumerate(batches(data.train_x, data.train_y, args.batch_size,
                                                resize, seed=args.seed, epoch=epoch), start=1):
            loss, right = train_clock.time(lambda: adapter.train_step(xb, yb), len(yb))
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss: expected a finite value, got {loss} at epoch "
                                         f"{epoch + 1} step {step}; try a lower --lr")
            loss_sum += loss * len(yb)
            correct += right
            progress.update(step, loss)
        progress.close()
        seconds = train_clock.seconds - seconds0
        examples = train_clock.examples - examples0
        eval_seconds0, eval_examples0 = eval_clock.seconds, eval_clock.examples
        test_acc = evaluate(adapter, data.test_x, data.test_y, args.batch_size, resize, eval_clock)
        eval_seconds = eval_clock.seconds - eval_seconds0
        row = {"epoch": epoch + 1, "train_loss": loss_sum / n_train, "train_acc": correct / n_train,
               "test_acc": test_acc,
               "examples_per_sec": examples / seconds if seconds else None, "seconds": seconds,
               "infer_examples_per_sec": ((eval_clock.examples - eval_examples0) / eval_seconds
                                          if eval_seconds else None)}
        history.append(row)
        speed = (f"{row['examples_per_sec']:.1f} examples/sec" if row["examples_per_sec"]
                 else "examples/sec after the first step only")
        first = (f", first step {train_clock.first:.2f} s apart" if epoch == start else "")
        log(f"epoch {row['epoch']}/{args.epochs}: loss {row['train_loss']:.3f}, train acc "
            f"{row['train_acc']:.3f}, test acc {row['test_acc']:.3f}, "
            f"{speed} on cpu ({NAMES[framework]}, {args.precision}{first})")
        save_checkpoint(out, adapter, epoch + 1, history, config)
        _write_text_atomically(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))

    save_weights(adapter.get_weights(), out / WEIGHTS)
    if history:
        plot_curves({NAMES[framework]: history}, out / CURVES, f"{spec.name} on {data.name}")
    counts = module.param_counts(adapter.model)
    summary = {"framework": framework, "arch": spec.name, "dataset": data.name,
               "in_channels": spec.in_channels, "num_classes": spec.num_classes,
               "input_size": resize or int(data.train_x.shape[2]),
               "epochs": len(history), "history": history,
               "params": {"trainable": counts.trainable, "non_trainable": counts.non_trainable,
                          "total": counts.total},
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "first_step_seconds": train_clock.first, "first_eval_step_seconds": eval_clock.first,
               "train_examples_per_sec": train_clock.rate(),
               "infer_examples_per_sec": eval_clock.rate(),
               "threads": module.get_threads(), "precision": args.precision,
               "compile": args.compile, "config": config}
    _write_text_atomically(out / RUN, json.dumps(summary, indent=1))
    return summary


def main(framework: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m resnet_<framework>.train`."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework: expected one of {FRAMEWORKS}, got {framework!r}")
    p = parser(f"python -m resnet_{framework}.train")
    args = p.parse_args(argv)
    check_args(p, args)
    # OpenMP and MXNet read the thread count once, when they load, which has not happened yet
    # in a train script: --threads alone is enough, in every framework.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    try:
        train(framework, args)
    except (DataError, FileNotFoundError, FileExistsError, ValueError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
