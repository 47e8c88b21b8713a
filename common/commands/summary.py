"""Side-by-side summary: per part, the output shape and parameter counts of the oracle and of
every framework's model, and whether they all agree.

    python -m common.commands.summary --arch d2l_resnet18 --input-size 224
"""
from __future__ import annotations

import sys

import numpy as np

from common.core.checks import check_geometry
from common.core.devices import check_memory
from common.commands.cli import (Parser, add_spec_flags, description, frameworks_arg, guarded,
                                 positive_int, spec_of)
from common.frameworks import FRAMEWORKS, NAMES, load, shape_as_nchw, to_layout
from common.core.oracle import ParamCounts, part_table
from common.core.spec import ResNetSpec
from common.core.tables import render


def framework_parts(framework: str, spec: ResNetSpec, input_size: int, batch: int = 1
                    ) -> dict[str, tuple[tuple[int, ...], ParamCounts]]:
    """Per part: (output shape as NCHW, parameter counts) read from the framework's model."""
    module = load(framework)
    model = module.build(spec)
    x = np.zeros((batch, spec.in_channels, input_size, input_size), np.float32)
    shapes = module.part_shapes(model, to_layout(x, module.LAYOUT))
    counts = module.part_param_counts(model)
    return {name: (shape_as_nchw(shapes[name], module.LAYOUT), counts[name]) for name in shapes}


def summary(spec: ResNetSpec, input_size: int = 224, frameworks=FRAMEWORKS,
            markdown: bool = False) -> tuple[str, bool]:
    """The side-by-side table and whether every framework agrees with the oracle."""
    oracle = {r.name: (r.out_shape, r.counts) for r in part_table(spec, input_size)}
    columns = {"oracle": oracle} | {fw: framework_parts(fw, spec, input_size) for fw in frameworks}
    header = ["part"]
    for col in columns:
        header += [f"{col} shape", f"{col} trainable", f"{col} BN stats"]
    rows, agree = [], True
    for part in oracle:
        row: list[object] = [part]
        for col, parts in columns.items():
            agree &= parts.get(part) == oracle[part]
            if part not in parts:  # missing, said so: never a shape () and counts of 0
                row += [f"n/a (no such part in {NAMES.get(col, col)})", "n/a", "n/a"]
                continue
            shape, counts = parts[part]
            row += [shape, counts.trainable, counts.non_trainable]
        rows.append(row)
    totals: list[object] = ["total"]
    for parts in columns.values():
        t = sum((c for _, c in parts.values()), ParamCounts(0, 0))
        totals += [f"{t.total:,} in all", t.trainable, t.non_trainable]
    rows.append(totals)
    names = ", ".join(NAMES[fw] for fw in frameworks)
    verdict = (f"all agree: {'yes' if agree else 'NO'} ({names} vs the oracle, "
               f"{spec.name}, input {input_size}x{input_size})")
    return render(header, rows, markdown) + "\n" + verdict, agree


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="resnet-summary", description=description(__doc__))
    add_spec_flags(parser)
    parser.add_argument("--input-size", type=positive_int, default=224, help="height = width (default 224)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help=f"comma-separated subset of {','.join(FRAMEWORKS)} (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    frameworks = frameworks_arg(parser, args.frameworks, FRAMEWORKS)
    spec = spec_of(args)
    check_geometry(spec, (1, spec.in_channels, args.input_size, args.input_size))
    check_memory(spec, 1, args.input_size, False, f"--input-size {args.input_size}")
    table, agree = summary(spec, args.input_size, frameworks, args.markdown)
    print(table)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
