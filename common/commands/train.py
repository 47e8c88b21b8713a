"""One training loop for four frameworks, driving a small adapter per framework.

    python -m resnet_torch.train --dataset digits --epochs 3 --resize 32
    python -m resnet_tf.train    --dataset digits --epochs 3 --resize 32   (same flags)
    python -m resnet_mx.train    --dataset digits --epochs 3 --resize 32

Defaults follow d2l classic: Fashion-MNIST, SGD, lr 0.05, batch 256, 10 epochs, resize 96.
A run folder (--out) holds metrics.jsonl, checkpoint.safetensors (written atomically after every
epoch), weights.safetensors (canonical, loadable by any framework), curves.png and run.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np

from common.commands.cli import Parser, guarded
from common.commands.plots import plot_curves
from common.core.checks import check_geometry
from common.core.devices import check_memory
from common.core.data import Dataset, batches, load_dataset
from common.core.errors import Error
from common.core.files import (arrays_bytes, atomic_path, ensure_space, lock_folder, path_error,
                               writable_dir)
from common.core.init import init_weights
from common.core.oracle import smallest_bn_map
from common.core.optim import OptimizerConfig
from common.core.spec import ResNetSpec, get_spec
from common.core.weights import (STEM_FILE_CHANNELS, Weights, WeightsError, adapt_stem,
                                 save_weights)
from common.formats.checkpoint import load_checkpoint, save_checkpoint
from common.frameworks import NAMES, load, module, record

CHECKPOINT, WEIGHTS, METRICS, RUN, CURVES = ("checkpoint.safetensors", "weights.safetensors",
                                             "metrics.jsonl", "run.json", "curves.png")
# Flags that must not change when a run is resumed (--epochs may grow; --out, --resume,
# --threads, --compile and --data-dir are about where and how, not what).
RUN_DEFINING = ("arch", "dataset", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                "resize", "limit", "seed", "init", "precision", "weights", "new_head", "sync_bn",
                "adapt_stem")
# A run saved before a flag existed was made with that flag's default.
ADDED_LATER = {"weights": None, "new_head": False, "sync_bn": False, "adapt_stem": False}


def parser(prog: str) -> argparse.ArgumentParser:
    """The flags shared by every train script and by compare (common.commands.cli's table)."""
    from common.commands.cli import description, train_flag_table
    return train_flag_table().add_to(Parser(prog=prog, description=description(__doc__)))


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad flags and impossible combinations: a parser error naming expected and given."""
    try:  # each number flag is checked by its type; what is left are combinations
        OptimizerConfig(args.optimizer, args.lr, args.momentum, args.weight_decay)
    except ValueError as err:
        p.error(str(err))
    if args.new_head and args.weights is None:
        p.error("--new-head: expected --weights too (it replaces the head of that file)")
    if args.adapt_stem and args.weights is None:
        p.error("--adapt-stem: expected --weights too (it adapts the stem of that file)")


class RunError(Error):
    """The run cannot go as asked: --resume of a run made with other settings, or a batch the
    launched workers cannot share."""


def optimizer_config(args: argparse.Namespace) -> OptimizerConfig:
    """The optimiser settings of the flags."""
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
             clock: StepClock | None = None, engine=None) -> float | None:
    """Accuracy in inference mode (running BatchNorm statistics); `clock` times the steps.
    With an engine, each worker evaluates its slice of the test set and the counts are summed.
    None when there is no test example to evaluate."""
    clock = clock or StepClock()
    if engine is not None:
        x, y = (np.array_split(a, engine.workers)[engine.rank] for a in (x, y))
    correct = sum(int((clock.time(partial(adapter.eval_step, xb), len(yb)).argmax(1) == yb).sum())
                  for xb, yb in batches(x, y, batch_size, resize) if len(yb))
    if engine is None:
        return correct / len(y) if len(y) else None
    total = engine.all_sum(np.array([correct, len(y)], np.float64))
    return float(total[0] / total[1]) if total[1] else None


class Workers:
    """This process's place in a launched run (common.commands.launch sets RESNET3_WORKERS and
    RESNET3_RANK; torchrun, also run directly, sets WORLD_SIZE and RANK); one worker alone
    when nothing is set."""

    def __init__(self, environ=os.environ):
        self.count = int(environ.get("RESNET3_WORKERS", environ.get("WORLD_SIZE", "1")))
        self.rank = int(environ.get("RESNET3_RANK", environ.get("RANK", "0")))
        self.host = int(environ.get("RESNET3_HOST_RANK", "0"))  # its machine under --hosts
        if not 0 <= self.rank < self.count:
            raise Error(f"RESNET3_RANK: expected 0..{self.count - 1}, got {self.rank}")

    @property
    def first(self) -> bool:
        """The first worker writes the run's files and speaks for it."""
        return self.rank == 0

    def epoch_lines(self, line: str) -> None:
        """Another worker's log: on a host other than the first, its epoch lines alone,
        named, for resnet-launch there to print; silent on the first host, whose launcher shows
        the first worker's (torchrun's workers share one stream there). One write per line:
        under torchrun stdout is unbuffered, and print's text and newline would be two."""
        if self.host > 0 and line.startswith("epoch "):
            sys.stdout.write(f"worker-{self.rank}: {line}\n")
            sys.stdout.flush()

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


def weights_from_file(path: str, spec: ResNetSpec, init: dict, new_head: bool, dataset: str,
                      log=print, adapt: bool = False) -> dict:
    """The starting weights of --weights: all of the file's, for the run's spec. A head of
    another size is refused unless new_head: then the head (head.fc) is `init`'s, the rest the
    file's, read for the file's own number of classes. adapt (--adapt-stem): the file is read
    as a 3-channel one and its stem adapted to the data's channels (core.weights.adapt_stem)."""
    from common.commands.convert import file_classes, read, source_format
    file_spec = stem_source(spec, dataset) if adapt else spec
    fmt, classes = source_format(path), file_classes(path)
    if new_head:
        weights = read(path, file_spec.with_overrides(num_classes=classes or spec.num_classes), fmt)
        weights |= {name: init[name] for name in init if name.startswith("head.fc.")}
        log(f"starting from {path} ({fmt}) with a new {spec.num_classes}-class head "
            f"(--new-head; the file's has {classes or 'an unknown number of'} classes)")
    elif classes is not None and classes != spec.num_classes:
        raise WeightsError(f"--weights: {path} has a {classes}-class head, the data set "
                           f"{dataset} has {spec.num_classes} classes; pass --new-head to train "
                           f"a new {spec.num_classes}-class head on the file's other weights "
                           f"(fine-tuning)")
    else:
        log(f"starting from {path} ({fmt})")
        weights = read(path, file_spec, fmt)
    if adapt:
        log(f"its {STEM_FILE_CHANNELS}-channel stem adapted to {spec.in_channels} channel(s) "
            f"(--adapt-stem)")
        weights = adapt_stem(weights, spec.in_channels)
    return weights


def stem_source(spec: ResNetSpec, dataset: str) -> ResNetSpec:
    """The spec --adapt-stem reads a file in: the run's, with a 3-channel stem."""
    if spec.in_channels == STEM_FILE_CHANNELS:
        raise WeightsError(f"--adapt-stem: expected data of other than {STEM_FILE_CHANNELS} "
                           f"channels (the file's stem), got {dataset} with {spec.in_channels}")
    if spec.input_bn:
        raise WeightsError(f"--adapt-stem: expected a network without an input BatchNorm (its "
                           f"statistics are per input channel), got {spec.name}")
    return spec.with_overrides(in_channels=STEM_FILE_CHANNELS)


# --- the loop, in the order it runs ----------------------------------------------------------

@dataclass
class Run:
    """One training run as train() sets it up; every step of the loop reads it. `package`:
    resnet_<framework>, its framework imported; `config`: the run-defining flags (RUN_DEFINING),
    kept in every checkpoint; `engine`: the framework's data-parallel engine under
    resnet-launch, else None; `log`: silent on every worker but the first."""
    framework: str
    args: argparse.Namespace
    data: Dataset
    spec: ResNetSpec
    package: ModuleType
    out: Path
    config: dict
    workers: Workers
    log: Callable[[str], None]
    engine: Any = None

    @property
    def resize(self) -> int | None:
        return self.args.resize or None

    @property
    def input_size(self) -> int:
        """The side of the images the network sees."""
        return self.resize or int(self.data.train_x.shape[2])

    def note(self, line: str) -> None:
        """A line about this framework's run, with its name before it."""
        self.log(f"{NAMES[self.framework]}: {line}")


@dataclass
class Start:
    """Where the epochs begin: epoch 0 with no weights yet (initial_weights makes them), or a
    checkpoint's epochs, history, weights and optimiser state."""
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    weights: Weights | None = None
    optimizer: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EpochPlan:
    """The training batches of every epoch: the first `steps` batches, `examples` examples in
    all (a last batch that cannot be trained is left out)."""
    steps: int
    examples: int


# The columns of metrics.jsonl and of run.json's history, in order.
COLUMNS = ("epoch", "train_loss", "train_acc", "test_acc", "examples", "test_examples",
           "examples_per_sec", "seconds", "infer_examples_per_sec")


def train(framework: str, args: argparse.Namespace, data: Dataset | None = None,
          log=print) -> dict:
    """Train one framework as the flags say; returns the run summary (also in run.json).
    Under resnet-launch, each worker trains on its share of every global batch through its
    framework's data-parallel engine, and the first worker alone writes files and logs."""
    workers = Workers()
    if args.batch_size % workers.count:
        raise RunError(f"--batch-size: expected a multiple of the {workers.count} workers (it "
                       f"is the global batch, shared equally), got {args.batch_size}")
    out = run_folder(framework, args, workers)
    # The first worker holds --out until the run ends: a second run there is refused.
    with lock_folder(out) if workers.first else nullcontext():
        run = set_up(framework, args, data, log, workers, out)
        try:
            return train_run(run)
        finally:
            if run.engine is not None:
                run.engine.close()


def run_folder(framework: str, args: argparse.Namespace, workers: Workers) -> Path:
    """--out (runs/<framework> when not given), made and proven writable by the first worker;
    an empty --out (an unset shell variable) is refused, not taken for the default."""
    if args.out == "":
        raise RunError("--out: expected a path, got ''")
    out = args.out if args.out is not None else f"runs/{framework}"
    return writable_dir(out) if workers.first else Path(out)


def set_up(framework: str, args: argparse.Namespace, data: Dataset | None, log,
           workers: Workers, out: Path) -> Run:
    """The run's data and spec, checked before any work; then its framework, device and
    (under resnet-launch) data-parallel engine, in that order."""
    if not workers.first:  # the first worker speaks for the run; the others give their
        log = workers.epoch_lines  # epoch lines, for the launcher of their host to show
    data = (data or load_dataset(args.dataset, args.data_dir)).limit(args.limit)
    for line in data.notes():  # classes left out (a short --limit run): said, not refused
        log(f"{NAMES[framework]}: warning: {line}")
    spec = get_spec(args.arch, in_channels=data.in_channels, num_classes=data.num_classes)
    config = {k: getattr(args, k) for k in RUN_DEFINING}
    size = args.resize or int(data.train_x.shape[2])
    # Without --sync-bn each worker's BatchNorm sees only its share of the batch.
    local = args.batch_size if args.sync_bn else args.batch_size // workers.count
    check_geometry(spec, (min(local, len(data.train_y)), spec.in_channels, size, size),
                   training=True)
    check_memory(spec, min(local, len(data.train_y)), size, True,
                 f"--batch-size {args.batch_size}, --resize {size}")
    package = load(framework)
    package.set_threads(args.threads)
    run = Run(framework, args, data, spec, package, out, config, workers, log)
    # Before anything else runs in the framework: TensorFlow's rule, and JAX's, for which
    # listing its GPUs (below) already starts its runtime.
    if workers.count > 1:
        run.engine = module(framework, "distributed").join(workers.count, workers.rank,
                                                           args.sync_bn)
    # A GPU the framework does not see is refused here, before any work (never a fall-back).
    module(framework, "devices").select(args.device)
    return run


def train_run(run: Run) -> dict:
    """The loop, once the run is set up: resume or start, the adapter, the epoch plan, then
    each epoch (train, evaluate, log, checkpoint), then the run's last files."""
    start = resume_or_start(run)
    weights = start.weights if start.weights is not None else initial_weights(run)
    adapter = make_adapter(run, weights, start.optimizer)
    plan = epoch_plan(run)
    if start.epoch >= run.args.epochs:
        run.note(f"the run in {run.out} already has {start.epoch} of {run.args.epochs} epochs")
    # The first training and inference steps of this process (tracing, compiling) are timed
    # apart and left out of examples/sec.
    train_clock, eval_clock = StepClock(), StepClock()
    history = start.history
    for epoch in range(start.epoch, run.args.epochs):
        row = {"epoch": epoch + 1} | train_one_epoch(run, adapter, plan, epoch, train_clock)
        row |= validate(run, adapter, eval_clock)
        history.append({k: row[k] for k in COLUMNS})
        log_epoch(run, adapter, history[-1], train_clock.first if epoch == start.epoch else None)
        save_progress(run, adapter, history)
    return finish(run, adapter, history, train_clock, eval_clock)


def resume_or_start(run: Run) -> Start:
    """With --resume, the checkpoint in --out, refused if it was made with other run-defining
    flags or another framework; without, a fresh start, refused if --out holds a run."""
    ckpt = run.out / CHECKPOINT
    if not run.args.resume:
        if ckpt.exists():
            raise path_error(FileExistsError, f"--out: {run.out} already holds a run; pass "
                             f"--resume to continue it or choose another --out", ckpt)
        return Start()
    if not ckpt.is_file():
        raise path_error(FileNotFoundError, f"--resume: expected a checkpoint at {ckpt}, found "
                         f"none", ckpt)
    saved = load_checkpoint(ckpt)
    before = saved.config
    changed = {k: (before.get(k, ADDED_LATER.get(k)), v) for k, v in run.config.items()
               if before.get(k, ADDED_LATER.get(k)) != v}
    if saved.framework != run.framework or changed:
        what = "; ".join(f"--{k.replace('_', '-')}: expected {a!r}, got {b!r}"
                         for k, (a, b) in changed.items()) or \
            f"framework: expected {saved.framework}, got {run.framework}"
        raise RunError(f"--resume: the run in {run.out} was made with other settings: {what}")
    return Start(saved.epoch, saved.history, saved.weights, saved.optimizer)


def initial_weights(run: Run) -> Weights:
    """The weights of a fresh run: --init's (the shared seeded NumPy init, or the framework's
    own), then --weights' file over them; every worker starts from the same."""
    args = run.args
    if args.init == "common":
        weights = init_weights(run.spec, args.seed)
    else:
        weights = run.package.to_canonical(run.package.build(run.spec, init="framework",
                                                                 seed=args.seed))
    if args.weights is not None:
        weights = weights_from_file(args.weights, run.spec, weights, args.new_head,
                                    run.data.name, run.note, args.adapt_stem)
    if run.engine is not None and args.init == "framework":
        # Each worker drew its own; every worker starts from the first worker's (the sum
        # of its values and the others' zeros).
        weights = {k: run.engine.all_sum(np.asarray(v, np.float64) if run.workers.first
                                         else np.zeros(np.shape(v))).astype(np.float32)
                   for k, v in weights.items()}
    return weights


def make_adapter(run: Run, weights: Weights, optimizer_state: dict):
    """The framework's adapter for the run's flags, with the optimiser state of a resumed run."""
    kwargs = {"engine": run.engine} if run.engine is not None else {}
    adapter = run.package.Adapter(run.spec, weights, optimizer=optimizer_config(run.args),
                                  precision=run.args.precision, compile=run.args.compile,
                                  channels_last=run.args.channels_last,
                                  device=run.args.device, **kwargs)
    if optimizer_state:
        adapter.set_optimizer_state(optimizer_state)
    return adapter


def epoch_plan(run: Run) -> EpochPlan:
    """How many batches of each epoch are trained. Two rules leave out the last batch, the
    same in every framework, each said once in the log:
    - a batch BatchNorm cannot normalise in train mode (one value per channel: one example, and
      a 1x1 map somewhere), as loaders with drop_last do; the adapters refuse such a batch
      (common.core.checks.check_geometry);
    - a batch the workers cannot share equally: unequal shares would weight the examples
      unequally in the averaged gradient."""
    n, batch = len(run.data.train_y), run.args.batch_size
    steps = math.ceil(n / batch)
    bh, bw, where = smallest_bn_map(run.spec, run.input_size, run.input_size)
    dropped = n % batch
    if dropped * bh * bw == 1:
        steps, n = steps - 1, n - dropped
        run.note(f"the last training batch of each epoch ({dropped} example, a {bh}x{bw} map at "
                 f"{where}) is dropped: BatchNorm needs more than one value per channel in "
                 f"train mode")
    last = n % batch
    if last % run.workers.count:
        steps, n = steps - 1, n - last
        run.note(f"the last training batch of each epoch ({last} examples) is dropped: "
                 f"{run.workers.count} workers need equal shares")
    return EpochPlan(steps, n)


def train_one_epoch(run: Run, adapter, plan: EpochPlan, epoch: int, clock: StepClock) -> dict:
    """One pass over the plan's batches, shuffled for (seed, epoch): the epoch's mean loss
    and accuracy over every worker's examples, and its training speed."""
    args = run.args
    progress = Progress(plan.steps, f"epoch {epoch + 1}/{args.epochs}")
    loss_sum, correct = 0.0, 0
    seconds0, examples0 = clock.seconds, clock.examples
    shuffled = batches(run.data.train_x, run.data.train_y, args.batch_size, run.resize,
                       seed=args.seed, epoch=epoch)
    for step, (xb, yb) in enumerate(itertools.islice(shuffled, plan.steps), start=1):
        xs, ys = run.workers.share(xb, yb) if run.engine is not None else (xb, yb)
        # examples/sec counts the global batch: every worker's examples
        loss, right = clock.time(partial(adapter.train_step, xs, ys), len(yb))
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss: expected a finite value, got {loss} at epoch "
                                     f"{epoch + 1} step {step}; try a lower --lr")
        loss_sum += loss * len(ys)
        correct += right
        progress.update(step, loss)
    progress.close()
    if run.engine is not None:  # the workers' sums: the epoch's figures for the global batches
        loss_sum, correct = run.engine.all_sum(np.array([loss_sum, correct], np.float64))
        correct = int(round(correct))
    seconds, examples = clock.seconds - seconds0, clock.examples - examples0
    return {"train_loss": loss_sum / plan.examples, "train_acc": correct / plan.examples,
            "examples": plan.examples, "examples_per_sec": examples / seconds if seconds else None,
            "seconds": seconds}


def validate(run: Run, adapter, clock: StepClock) -> dict:
    """Test accuracy in inference mode, and the inference speed of this evaluation."""
    seconds0, examples0 = clock.seconds, clock.examples
    test_acc = evaluate(adapter, run.data.test_x, run.data.test_y, run.args.batch_size,
                        run.resize, clock, run.engine)
    seconds = clock.seconds - seconds0
    return {"test_acc": test_acc, "test_examples": len(run.data.test_y),
            "infer_examples_per_sec": (clock.examples - examples0) / seconds if seconds else None}


# Why a figure of an epoch can be missing (None in metrics.jsonl and run.json).
MISSING = {"examples_per_sec": "one step, timed apart as the first",
           "infer_examples_per_sec": "one step, timed apart as the first",
           "test_acc": "no test examples"}


def figure(row: dict, key: str, fmt: str, unit: str = "") -> str:
    """row[key] formatted (before `unit`), or "<unit> n/a (why)" when it is missing (MISSING
    says why)."""
    value = row.get(key)
    if value is None:
        return f"{unit} n/a ({MISSING.get(key, 'not measured')})".lstrip()
    return f"{value:{fmt}} {unit}".rstrip()


def log_epoch(run: Run, adapter, row: dict, first_step: float | None) -> None:
    """The epoch's line; `first_step`: the seconds of the first step, timed apart, on the first
    epoch of this process."""
    first = f", first step {first_step:.2f} s apart" if first_step is not None else ""
    run.log(f"epoch {row['epoch']}/{run.args.epochs}: loss {row['train_loss']:.3f}, train acc "
            f"{row['train_acc']:.3f}, test acc {figure(row, 'test_acc', '.3f')}, "
            f"{figure(row, 'examples_per_sec', '.1f', 'examples/sec')} on "
            f"{adapter.device} ({NAMES[run.framework]}, {run.args.precision}{first})")


class Snapshot:
    """An adapter's weights and optimiser state, read once, so that what is checked is what
    is written (common.formats.checkpoint.Checkpointed)."""

    def __init__(self, adapter):
        self.framework = adapter.framework
        self.weights, self.optimizer = adapter.get_weights(), adapter.optimizer_state()

    def get_weights(self) -> Weights:
        return self.weights

    def optimizer_state(self) -> dict:
        return self.optimizer

    def nbytes(self) -> int:
        """About the size of its checkpoint (core.files.arrays_bytes)."""
        return arrays_bytes([*self.weights.values(), *self.optimizer.values()])


def finite_snapshot(run: Run, adapter, epoch: int) -> Snapshot:
    """The adapter's state after `epoch` epochs, refused (FloatingPointError, one line) when a
    weight or an optimiser slot is NaN or infinite: the last steps diverged although the loss
    they reported was finite, and the last finite checkpoint must stay the one on disk."""
    snap = Snapshot(adapter)
    for name, value in itertools.chain(snap.weights.items(), snap.optimizer.items()):
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            bad = value[~np.isfinite(value)].flat[0]
            kept = (f"the checkpoint of epoch {epoch - 1} in {run.out} is kept"
                    if epoch > 1 and (run.out / CHECKPOINT).is_file()
                    else "no checkpoint was written")
            raise FloatingPointError(f"weights: expected finite values after epoch {epoch}, got "
                                     f"{bad} in {name} (the last steps diverged; try a lower "
                                     f"--lr); {kept}")
    return snap


def save_progress(run: Run, adapter, history: list[dict]) -> None:
    """The checkpoint and metrics.jsonl after an epoch (the first worker writes them), once
    the weights are known to be finite."""
    epoch = history[-1]["epoch"]
    snap = finite_snapshot(run, adapter, epoch)
    if run.workers.first:
        path = run.out / CHECKPOINT
        ensure_space(path, snap.nbytes() + len(json.dumps(history)))
        save_checkpoint(path, snap, epoch, history, run.config)
        _write_text_atomically(run.out / METRICS, "".join(json.dumps(r) + "\n" for r in history))


def finish(run: Run, adapter, history: list[dict], train_clock: StepClock,
           eval_clock: StepClock) -> dict:
    """The run's last files (the first worker writes them): weights.safetensors, curves.png,
    and run.json with the summary, which it returns."""
    if run.workers.first:
        snap = finite_snapshot(run, adapter, len(history))
        ensure_space(run.out / WEIGHTS, snap.nbytes())
        save_weights(snap.weights, run.out / WEIGHTS)
    if history and run.workers.first:
        plot_curves({NAMES[run.framework]: history}, run.out / CURVES,
                    f"{run.spec.name} on {run.data.name}")
    summary = summarise(run, adapter, history, train_clock, eval_clock)
    if run.workers.first:
        _write_text_atomically(run.out / RUN, json.dumps(summary, indent=1))
    return summary


def summarise(run: Run, adapter, history: list[dict], train_clock: StepClock,
              eval_clock: StepClock) -> dict:
    """run.json: what was trained, how, its history, parameter counts, speed and peak memory."""
    args, spec, counts = run.args, run.spec, run.package.param_counts(adapter.model)
    return {"framework": run.framework, "arch": spec.name, "dataset": run.data.name,
            "data_from": run.data.source,
            "in_channels": spec.in_channels, "num_classes": spec.num_classes,
            "input_size": run.input_size, "epochs": len(history), "history": history,
            "params": {"trainable": counts.trainable, "non_trainable": counts.non_trainable,
                       "total": counts.total},
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "first_step_seconds": train_clock.first, "first_eval_step_seconds": eval_clock.first,
            "train_examples_per_sec": train_clock.rate(),
            "infer_examples_per_sec": eval_clock.rate(),
            "threads": run.package.get_threads(), "precision": args.precision,
            "compile": args.compile, "channels_last": adapter.channels_last,
            "device": str(adapter.device),
            "workers": run.workers.count, "sync_bn": args.sync_bn, "config": run.config}


@guarded
def main(framework: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m resnet_<framework>.train`."""
    p = parser(f"python -m {record(framework).package}.train")
    args = p.parse_args(argv)
    check_args(p, args)
    # OpenMP and MXNet read the thread count once, when they load, which has not happened yet
    # in a train script: --threads alone is enough, in every framework.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    train(framework, args)
    return 0
