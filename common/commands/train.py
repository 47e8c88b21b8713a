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

from common.commands.cli import (Parser, guarded, non_negative_float, non_negative_int, positive_float,
                        positive_int, unit_interval)
from common.core.checks import PRECISIONS, check_geometry
from common.core.data import DATASETS, Dataset, batches, load_dataset
from common.core.devices import add_device_flag
from common.core.files import atomic_path, writable_dir
from common.frameworks import FRAMEWORKS, NAMES, load
from common.core.init import INIT_CHOICES, init_weights
from common.core.oracle import smallest_bn_map
from common.core.optim import OPTIMIZERS, OptimizerConfig
from common.commands.plots import plot_curves
from common.core.spec import PRESETS, ResNetSpec, get_spec
from common.core.weights import WeightsError, save_weights

CHECKPOINT, WEIGHTS, METRICS, RUN, CURVES = ("checkpoint.safetensors", "weights.safetensors",
                                             "metrics.jsonl", "run.json", "curves.png")
# Flags that must not change when a run is resumed (--epochs may grow; --out, --resume,
# --threads, --compile and --data-dir are about where and how, not what).
RUN_DEFINING = ("arch", "dataset", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                "resize", "limit", "seed", "init", "precision", "weights", "new_head", "sync_bn")
# A run saved before a flag existed was made with that flag's default.
ADDED_LATER = {"weights": None, "new_head": False, "sync_bn": False}


def parser(prog: str) -> argparse.ArgumentParser:
    """The flags shared by every train script and by compare (common.commands.cli's table)."""
    from common.commands.cli import train_flag_table
    return train_flag_table().add_to(Parser(prog=prog, description=__doc__.splitlines()[0]))


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad flags and impossible combinations: a parser error naming expected and given."""
    try:  # each number flag is checked by its type; what is left are combinations
        OptimizerConfig(args.optimizer, args.lr, args.momentum, args.weight_decay)
    except ValueError as err:
        p.error(str(err))
    if args.new_head and not args.weights:
        p.error("--new-head: expected --weights too (it replaces the head of that file)")


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
             clock: StepClock | None = None, engine=None) -> float:
    """Accuracy in inference mode (running BatchNorm statistics); `clock` times the steps.
    With an engine, each worker evaluates its slice of the test set and the counts are summed."""
    clock = clock or StepClock()
    if engine is not None:
        x, y = (np.array_split(a, engine.workers)[engine.rank] for a in (x, y))
    correct = sum(int((clock.time(lambda: adapter.eval_step(xb), len(yb)).argmax(1) == yb).sum())
                  for xb, yb in batches(x, y, batch_size, resize) if len(yb))
    if engine is None:
        return correct / len(y)
    total = engine.all_sum(np.array([correct, len(y)], np.float64))
    return float(total[0] / total[1])


class Workers:
    """This process's place in a launched run (common.commands.launch sets RESNET3_WORKERS and
    RESNET3_RANK; torchrun, also run directly, sets WORLD_SIZE and RANK); one worker alone
    when nothing is set."""

    def __init__(self, environ=os.environ):
        self.count = int(environ.get("RESNET3_WORKERS", environ.get("WORLD_SIZE", "1")))
        self.rank = int(environ.get("RESNET3_RANK", environ.get("RANK", "0")))
        if not 0 <= self.rank < self.count:
            raise ValueError(f"RESNET3_RANK: expected 0..{self.count - 1}, got {self.rank}")

    @property
    def first(self) -> bool:
        """The first worker writes the run's files and speaks for it."""
        return self.rank == 0

    def share(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This worker's equal, contiguous share of a global batch."""
        n = len(y) // self.count
        at = slice(self.rank * n, (self.rank + 1) * n)
        return x[at], y[at]


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


def weights_from_file(path: str, spec: ResNetSpec, init: dict, new_head: bool, dataset: str,
                      log=print) -> dict:
    """The starting weights of --weights: all of the file's, for the run's spec. A head of
    another size is refused unless new_head: then the head (head.fc) is `init`'s, the rest the
    file's, read for the file's own number of classes."""
    from common.commands.convert import file_classes, read, source_format
    fmt, classes = source_format(path), file_classes(path)
    if new_head:
        weights = read(path, spec.with_overrides(num_classes=classes or spec.num_classes), fmt)
        weights |= {name: init[name] for name in init if name.startswith("head.fc.")}
        log(f"starting from {path} ({fmt}) with a new {spec.num_classes}-class head "
            f"(--new-head; the file's has {classes or 'an unknown number of'} classes)")
        return weights
    if classes is not None and classes != spec.num_classes:
        raise WeightsError(f"--weights: {path} has a {classes}-class head, the data set "
                           f"{dataset} has {spec.num_classes} classes; pass --new-head to train "
                           f"a new {spec.num_classes}-class head on the file's other weights "
                           f"(fine-tuning)")
    log(f"starting from {path} ({fmt})")
    return read(path, spec, fmt)


def train(framework: str, args: argparse.Namespace, data: Dataset | None = None,
          log=print) -> dict:
    """Train one framework as the flags say; returns the run summary (also in run.json).
    Under resnet-launch, each worker trains on its share of every global batch through its
    framework's data-parallel engine, and the first worker alone writes files and logs."""
    workers = Workers()
    if args.batch_size % workers.count:
        raise ValueError(f"--batch-size: expected a multiple of the {workers.count} workers (it "
                         f"is the global batch, shared equally), got {args.batch_size}")
    if not workers.first:
        log = lambda line: None  # noqa: E731 - the first worker speaks for the run
    out = (writable_dir if workers.first else Path)(args.out or f"runs/{framework}")
    data = (data or load_dataset(args.dataset, args.data_dir)).limit(args.limit)
    spec = get_spec(args.arch, in_channels=data.in_channels, num_classes=data.num_classes)
    config = {k: getattr(args, k) for k in RUN_DEFINING}
    resize = args.resize or None
    n_train = len(data.train_y)
    size = resize or int(data.train_x.shape[2])
    # Without --sync-bn each worker's BatchNorm sees only its share of the batch.
    local = args.batch_size if args.sync_bn else args.batch_size // workers.count
    check_geometry(spec, (min(local, n_train), spec.in_channels, size, size), training=True)
    module = load(framework)
    module.set_threads(args.threads)
    from importlib import import_module
    # A GPU the framework does not see is refused here, before any work (never a fall-back).
    import_module(f"resnet_{framework}.devices").select(args.device)
    engine = None
    if workers.count > 1:  # before anything else runs in the framework (TensorFlow's rule)
        engine = import_module(f"resnet_{framework}.distributed").join(
            workers.count, workers.rank, args.sync_bn)
    try:
        return _train(framework, args, data, spec, module, out, config, workers, engine, log)
    finally:
        if engine is not None:
            engine.close()


def _train(framework, args, data, spec, module, out, config, workers, engine, log) -> dict:
    """train() once the engine (if any) is joined: a function of its own, so that the engine
    is left whatever happens."""
    resize = args.resize or None
    n_train = len(data.train_y)
    size = resize or int(data.train_x.shape[2])
    history: list[dict] = []
    start = 0
    ckpt = out / CHECKPOINT
    if args.resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: expected a checkpoint at {ckpt}, found none")
        weights, opt_state, meta = load_checkpoint(ckpt)
        saved = json.loads(meta["config"])
        changed = {k: (saved.get(k, ADDED_LATER.get(k)), v) for k, v in config.items()
                   if saved.get(k, ADDED_LATER.get(k)) != v}
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
        if args.weights:
            weights = weights_from_file(args.weights, spec, weights, args.new_head, data.name,
                                        lambda line: log(f"{NAMES[framework]}: {line}"))
        if engine is not None and args.init == "framework":
            # Each worker drew its own; every worker starts from the first worker's (the sum
            # of its values and the others' zeros).
            weights = {k: engine.all_sum(np.asarray(v, np.float64) if workers.first
                                         else np.zeros(np.shape(v))).astype(np.float32)
                       for k, v in weights.items()}
    kwargs = {"engine": engine} if engine is not None else {}
    adapter = module.Adapter(spec, weights, optimizer=optimizer_config(args),
                             precision=args.precision, compile=args.compile,
                             device=args.device, **kwargs)
    if opt_state:
        adapter.set_optimizer_state(opt_state)

    steps = math.ceil(n_train / args.batch_size)
    # A last batch that BatchNorm cannot normalise (one value per channel: one example, and a
    # 1x1 map somewhere) is dropped in training, as loaders with drop_last do; the adapters
    # refuse such a batch (common.core.checks.check_geometry), the same in every framework.
    bh, bw, where = smallest_bn_map(spec, size, size)
    dropped = n_train % args.batch_size if (n_train % args.batch_size) * bh * bw == 1 else 0
    if dropped:
        steps -= 1
        log(f"{NAMES[framework]}: the last training batch of each epoch ({dropped} example, "
            f"a {bh}x{bw} map at {where}) is dropped: BatchNorm needs more than one value per "
            f"channel in train mode")
    n_train -= dropped
    # A last batch that the workers cannot share equally is dropped too: unequal shares would
    # weight the examples unequally in the averaged gradient.
    last = n_train % args.batch_size
    if last % workers.count:
        steps -= 1
        n_train -= last
        log(f"{NAMES[framework]}: the last training batch of each epoch ({last} examples) is "
            f"dropped: {workers.count} workers need equal shares")
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
            if step > steps:  # the dropped last batch
                break
            xs, ys = workers.share(xb, yb) if engine is not None else (xb, yb)
            # examples/sec counts the global batch: every worker's examples
            loss, right = train_clock.time(lambda: adapter.train_step(xs, ys), len(yb))
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss: expected a finite value, got {loss} at epoch "
                                         f"{epoch + 1} step {step}; try a lower --lr")
            loss_sum += loss * len(ys)
            correct += right
            progress.update(step, loss)
        progress.close()
        if engine is not None:  # the workers' sums: the epoch's figures for the global batches
            loss_sum, correct = engine.all_sum(np.array([loss_sum, correct], np.float64))
            correct = int(round(correct))
        seconds = train_clock.seconds - seconds0
        examples = train_clock.examples - examples0
        eval_seconds0, eval_examples0 = eval_clock.seconds, eval_clock.examples
        test_acc = evaluate(adapter, data.test_x, data.test_y, args.batch_size, resize, eval_clock,
                            engine)
        eval_seconds = eval_clock.seconds - eval_seconds0
        row = {"epoch": epoch + 1, "train_loss": loss_sum / n_train, "train_acc": correct / n_train,
               "test_acc": test_acc, "examples": n_train, "test_examples": len(data.test_y),
               "examples_per_sec": examples / seconds if seconds else None, "seconds": seconds,
               "infer_examples_per_sec": ((eval_clock.examples - eval_examples0) / eval_seconds
                                          if eval_seconds else None)}
        history.append(row)
        speed = (f"{row['examples_per_sec']:.1f} examples/sec" if row["examples_per_sec"]
                 else "examples/sec after the first step only")
        first = (f", first step {train_clock.first:.2f} s apart" if epoch == start else "")
        log(f"epoch {row['epoch']}/{args.epochs}: loss {row['train_loss']:.3f}, train acc "
            f"{row['train_acc']:.3f}, test acc {row['test_acc']:.3f}, "
            f"{speed} on {adapter.device} ({NAMES[framework]}, {args.precision}{first})")
        if workers.first:
            save_checkpoint(out, adapter, epoch + 1, history, config)
            _write_text_atomically(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))

    if workers.first:
        save_weights(adapter.get_weights(), out / WEIGHTS)
    if history and workers.first:
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
               "compile": args.compile, "device": str(adapter.device),
               "workers": workers.count, "sync_bn": args.sync_bn,
               "config": config}
    if workers.first:
        _write_text_atomically(out / RUN, json.dumps(summary, indent=1))
    return summary


@guarded
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
    train(framework, args)
    return 0
