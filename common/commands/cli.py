"""The command-line parser every command uses: each default shown in --help, and a "did you
mean" for a mistyped choice (a preset, a data set, an optimiser...)."""
from __future__ import annotations

import argparse
import difflib
import functools
import math
import os
import sys


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


# Expected failures: bad flags or input (ValueError: InputError, SpecError, WeightsError,
# DataError...), files (OSError) and a diverging loss. Anything else is a bug and keeps its
# traceback; RESNET_TRACEBACK=1 keeps it for these too.
EXPECTED = (ValueError, OSError, FloatingPointError)


def guarded(main):
    """A command's main(argv) that answers an expected failure with one line, `error: ...`, and
    exit status 2, and Ctrl-C with exit status 130, instead of a Python traceback."""
    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except EXPECTED as err:
            if os.environ.get("RESNET_TRACEBACK"):
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
