"""The command-line parser every command uses: each default shown in --help, and a "did you
mean" for a mistyped choice (a preset, a data set, an optimiser...)."""
from __future__ import annotations

import argparse
import difflib


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
