"""The command-line parser every command uses: each default shown in --help, a "did you mean"
for a mistyped choice (a preset, a data set, an optimiser...), the flags that several commands
share (defined here once), and `guarded`, which answers an expected error with one line."""
from __future__ import annotations

import _thread
import argparse
import difflib
import functools
import math
import os
import signal
import sys
import threading
from contextlib import contextmanager

from common.core.devices import add_device_flag
from common.core.errors import Error


def description(doc: str) -> str:
    """A command module's docstring, its first paragraph on one line: the command's --help
    description (a docstring's first line alone may end mid-sentence)."""
    return " ".join(doc.split("\n\n", 1)[0].split())


def suggestion(value: str, options) -> str:
    """"; did you mean 'x'?" for the options closest to value, or "" if none is close."""
    options = [str(o) for o in options]
    close = (difflib.get_close_matches(str(value), options, n=3, cutoff=0.6)
             or [o for o in options if str(value).startswith(o)])  # mxnet -> mx
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def _check_value(self, action, value):  # argparse's hook for choices
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentError(
                action, f"expected one of {', '.join(map(str, action.choices))}, got {value!r}"
                        f"{suggestion(value, action.choices)}")


def frameworks_arg(p: argparse.ArgumentParser, value: str, known) -> tuple[str, ...]:
    """The names of a comma-separated --frameworks value; a parser error for an unknown one."""
    names = tuple(f for f in value.split(",") if f)
    unknown = [f for f in names if f not in known]
    if not names or unknown:
        p.error(f"--frameworks: expected names from {','.join(known)}, got {value!r}"
                f"{suggestion(unknown[0], known) if unknown else ''}")
    return names


def _number(kind, ok, expected: str):
    """An argparse type: `kind` of the text, refused unless ok(value), with a message that names
    what was expected and what was given (argparse puts the flag's name before it)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
non_negative_float = _number(float, lambda v: math.isfinite(v) and v >= 0,
                             "a finite number >= 0")
unit_interval = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def path_arg(text: str) -> str:
    """An argparse type for a path flag: an empty value (an unset shell variable, `--out
    "$OUT"`) is refused, never taken for the flag's absence or for the current folder."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    return text


path_arg.__name__ = "a path"


def expected(err: BaseException) -> bool:
    """Whether err is an expected failure: an Error (a bad flag, input, file, spec or device), a
    file-system error about a path (an OSError with a filename), or a diverging loss (the
    training loop's FloatingPointError). Anything else is a bug and keeps its traceback."""
    return (isinstance(err, (Error, FloatingPointError))
            or isinstance(err, OSError) and err.filename is not None)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, as Ctrl-C raises KeyboardInterrupt: the same code
    stops what the command started (finally blocks, children), and guarded reports it as
    terminated, exit status 143 (128 + SIGTERM), not as Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated


@contextmanager
def sigterm_raises_terminated():
    """While the block runs, SIGTERM raises Terminated in the main thread (a handler can only
    be set there; elsewhere nothing changes); the previous handler is put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def sigterm_to_the_main_thread() -> None:
    """For a script's whole process, called first thing in its main thread: SIGTERM blocked
    there, and so in every thread started after (a framework's runtime and compute threads),
    and taken by one watcher thread (`signal.sigwait`) that hands it to the main thread
    (`_thread.interrupt_main`), where the Python handler (guarded's: Terminated) runs between
    two instructions, as it would without this. No other thread is ever interrupted by it.
    With no Python handler set, SIGTERM ends the process as by default. Not for a process that
    starts other programs: they would inherit the blocked signal.

    JAX's train script calls it: SIGTERM delivered to one of XLA's threads could make the
    script abort in glibc instead of exiting 143 (measured in docs/testing.md, test_run_faults)."""
    held = {signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)

    def watch() -> None:
        while True:
            signum = signal.sigwait(held)
            handler = signal.getsignal(signum)
            if handler in (signal.SIG_DFL, None):
                signal.pthread_sigmask(signal.SIG_UNBLOCK, held)  # in this thread only
                signal.raise_signal(signum)  # the default action: the process ends
            elif handler is not signal.SIG_IGN:
                _thread.interrupt_main(signum)
    threading.Thread(target=watch, name="sigterm-to-main-thread", daemon=True).start()


def guarded(main):
    """A command's main(argv) that answers an expected failure with one line, `error: ...`, and
    exit status 2, Ctrl-C with exit status 130 and SIGTERM with 143, instead of a Python
    traceback; RESNET_TRACEBACK=1 keeps the traceback."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            with sigterm_raises_terminated():
                return main(*args, **kwargs)
        except Terminated:
            print("terminated (SIGTERM)", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except (Error, OSError, FloatingPointError) as err:
            if not expected(err) or os.environ.get("RESNET_TRACEBACK"):
                raise
            print(f"error: {err}", file=sys.stderr)
            return 2
    return run


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """--arch, --num-classes and --in-channels: the network a command works on."""
    from common.core.spec import PRESETS
    p.add_argument("--arch", default="d2l_resnet18", choices=sorted(PRESETS), help="preset")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="override the preset's classes")
    p.add_argument("--in-channels", type=positive_int, default=None,
                   help="override the preset's input channels")


def spec_of(args: argparse.Namespace):
    """The spec of add_spec_flags' flags."""
    from common.core.spec import get_spec
    return get_spec(args.arch, **{k: getattr(args, k) for k in ("num_classes", "in_channels")
                                  if getattr(args, k) is not None})


# --- flags that several commands share: each defined here once -------------------------------

def add_frameworks_flag(p, help: str | None = None) -> None:
    """--frameworks: a comma-separated subset of the frameworks (read it with frameworks_arg)."""
    from common.frameworks import FRAMEWORKS
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help=help or f"comma-separated subset of {','.join(FRAMEWORKS)}")


def add_threads_flag(p, help: str = "CPU threads per framework (all cores by default)") -> None:
    """--threads: CPU threads for a framework, every core this process may use by default;
    more than that is refused (common.core.devices.check_threads)."""
    from common.core.devices import threads_arg, usable_cores
    p.add_argument("--threads", type=threads_arg, default=usable_cores(), help=help)


def add_seed_flag(p, help: str | None = None) -> None:
    """--seed: the seed of the shared initialisation (and of whatever else the command draws)."""
    p.add_argument("--seed", type=non_negative_int, default=0, help=help)


class Flags:
    """A table of flags, written as add_argument calls: added to any parser (add_to), and turned
    back into a command line from parsed args (argv), as compare does for its child processes."""

    def __init__(self):
        self.rows: list[tuple[tuple[str, ...], dict]] = []

    def add_argument(self, *names: str, **kwargs) -> None:
        self.rows.append((names, kwargs))

    def add_to(self, p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        for names, kwargs in self.rows:
            p.add_argument(*names, **kwargs)
        return p

    def argv(self, args: argparse.Namespace, leave: tuple[str, ...] = ()) -> list[str]:
        """The flags that reproduce args (all but the dests in `leave`); a flag whose value is
        None is left out, so that it keeps its default."""
        flags = []
        for names, kwargs in self.rows:
            dest = kwargs.get("dest", names[0].lstrip("-").replace("-", "_"))
            if dest in leave:
                continue
            value = getattr(args, dest)
            if kwargs.get("action") == "store_true":
                flags += [names[0]] if value else []
            elif value is not None:
                flags += [names[0], str(value)]
        return flags


def train_flag_table() -> Flags:
    """The flags of the train scripts (`resnet3 train`, python -m resnet_<fw>.train), which
    compare takes too and passes on to each framework's train script."""
    from common.core.checks import PRECISIONS
    from common.core.data import DATASETS
    from common.core.init import INIT_CHOICES
    from common.core.optim import OPTIMIZERS
    from common.core.spec import PRESETS
    f = Flags()
    f.add_argument("--arch", default="d2l_resnet18", choices=sorted(PRESETS),
                   help="preset (docs/presets.md)")
    f.add_argument("--dataset", default="fashion_mnist", choices=DATASETS,
                   help="digits and mnist5k are embedded (no network)")
    f.add_argument("--data-dir", type=path_arg, default=None, help="where data files are (or go)")
    f.add_argument("--epochs", type=positive_int, default=10, help="epochs to train")
    f.add_argument("--batch-size", type=positive_int, default=256, help="examples per step")
    f.add_argument("--lr", type=positive_float, default=0.05, help="learning rate")
    f.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="optimiser")
    f.add_argument("--momentum", type=unit_interval, default=0.0, help="SGD momentum")
    f.add_argument("--weight-decay", type=non_negative_float, default=0.0, help="L2 weight decay")
    f.add_argument("--resize", type=non_negative_int, default=96,
                   help="image side after resizing; 0 keeps it")
    f.add_argument("--limit", type=positive_int, default=None,
                   help="use only the first N training examples")
    add_seed_flag(f, help="initial weights and data order")
    f.add_argument("--init", default="common", choices=INIT_CHOICES,
                   help="common: the shared seeded NumPy init; framework: the framework's own")
    f.add_argument("--weights", type=path_arg, default=None, metavar="PATH",
                   help="start (fine-tune) from this file, in any format resnet-convert reads "
                        "(canonical, .pt, .weights.h5, .params, torchvision/timm .pth, "
                        ".safetensors); its head must fit the data set's classes, see --new-head")
    f.add_argument("--new-head", action="store_true",
                   help="with --weights: every weight from the file but the classifier "
                        "(head.fc), which is new, for the data set's classes, from --init and "
                        "--seed: fine-tuning a 1000-class ImageNet file on 10 classes")
    f.add_argument("--adapt-stem", action="store_true",
                   help="with --weights: a 3-channel file on data of other channels, its stem "
                        "kernel summed over its input channels onto 1 (timm's in_chans rule; "
                        "others: repeated and scaled by 3/channels)")
    add_threads_flag(f, help="CPU threads for the framework; all cores by default, the fastest "
                             "measured (docs/performance.md)")
    f.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="bf16: torch.autocast, Keras mixed_bfloat16, MXNet AMP; weights stay "
                        "float32")
    f.add_argument("--compile", action="store_true",
                   help="torch.compile, XLA (jit_compile), Gluon static_alloc/static_shape")
    f.add_argument("--channels-last", action="store_true",
                   help="PyTorch: model and batches in torch.channels_last memory format "
                        "(resnet-bench --tuned's fastest fp32 option on the CPU); TensorFlow "
                        "and JAX compute channels-last always, MXNet NCHW: no change there")
    f.add_argument("--out", type=path_arg, default=None, help="run folder; None: runs/<framework>")
    f.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_device_flag(f)
    f.add_argument("--sync-bn", action="store_true",
                   help="under resnet-launch: BatchNorm statistics over the global batch, as "
                        "one process; without it each worker normalises its own share")
    return f
