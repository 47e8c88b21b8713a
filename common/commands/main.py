"""resnet3: one command for everything the project does; `resnet3 <command> --help` for each.

    resnet3 train --framework torch --dataset digits --epochs 3 --resize 32
    resnet3 compare --dataset digits --epochs 4 --resize 32 --batch-size 64

Each command is a module of common/commands with main(argv) -> int, imported only when it
runs (so `resnet3 --help` loads no framework); the table below names it and says what it does.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from common.commands.cli import Parser, description

# name: (the function that runs it, "module:function", taking the command's argv; one line)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("common.commands.main:train",
              "train one framework (--framework torch, tf, mx or jax) on a data set"),
    "compare": ("common.commands.compare:main",
                "train every framework from the same weights on the same data; one report"),
    "bench": ("common.commands.bench:main",
              "each framework's steps against a plain step written in that framework"),
    "convert": ("common.commands.convert:main",
                "convert a weights file between formats (four frameworks, torchvision, timm)"),
    "crosscheck": ("common.commands.crosscheck:main",
                   "one weights file in every framework: largest differences of their outputs"),
    "export": ("common.commands.export:main", "export a network to ONNX from any framework"),
    "predict": ("common.commands.predict:main",
                "the top classes of images (JPEG, PNG) in one framework or all of them"),
    "launch": ("common.commands.launch:main",
               "data-parallel training on a framework's own engine: starts the processes"),
    "summary": ("common.commands.summary:main",
                "per part, output shape and parameters of every framework's model"),
    "side-by-side": ("common.commands.side_by_side:main",
                     "(re)write docs/side-by-side.md: the four blocks.py files aligned"),
}


def parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items())
    p = Parser(prog="resnet3", description=description(__doc__),
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=f"commands:\n{listing}\n\nresnet3 <command> --help: the command's flags")
    p.add_argument("command", choices=COMMANDS, metavar="command", help="one of the commands below")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's flags")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`resnet3 <command> args...`: <command>'s main(args)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    if not argv:
        p.error("expected a command, got none; resnet3 --help lists them")
    args = p.parse_args(argv)
    module, function = COMMANDS[args.command][0].split(":")
    return getattr(importlib.import_module(module), function)(args.args)


def train(argv: Sequence[str]) -> int:
    """`resnet3 train --framework F ...`: what `python -m resnet_F.train ...` runs."""
    from common.commands import train as loop
    from common.frameworks import FRAMEWORKS
    full = loop.parser("resnet3 train")
    full.add_argument("--framework", required=True, choices=FRAMEWORKS,
                      default=argparse.SUPPRESS, help="the framework that trains")
    loop.check_args(full, full.parse_args(argv))  # --help, bad flags: under this command's name
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--framework")
    known, rest = own.parse_known_args(argv)
    return loop.main(known.framework, rest)


if __name__ == "__main__":
    sys.exit(main())
