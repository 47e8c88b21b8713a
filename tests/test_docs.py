"""The front door and the site: the README is short and its commands are the ones CI and the
pages run; `mkdocs build --strict` passes (a broken link, a page missing from the nav, a nav
entry without a page, or a docstring that does not parse fails it); the figures the pages copy
from a command (the preset table, the README's excerpt of the main command's report) agree with
their source."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from common.core.oracle import param_counts
from common.core.spec import PRESETS
from common.frameworks import NAMES

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def code_lines(text: str) -> list[str]:
    """Every line inside a fenced code block."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def table(text: str, first_header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with `| first_header |`, as cells
    with backticks stripped; the header row first."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not set(line) <= set("|-: "):
            rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    return rows


# --- the site ---------------------------------------------------------------------------------

def test_the_site_builds_with_strict_checks(tmp_path):
    """mkdocs.yml sets strict and warns on every broken link, anchor, nav entry and omitted page;
    mkdocstrings' griffe warns on a docstring it cannot parse: any warning fails the build."""
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
              str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")]
    done = subprocess.run(mkdocs, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert done.returncode == 0 and not warnings, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "index.html").read_text().count("doc-heading") > 50


def test_every_page_is_in_the_nav_and_linked_from_the_readme():
    nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M))
    pages = {p.name for p in DOCS.glob("*.md")} | {"architecture.md"}
    assert pages <= nav | {"index.md"}, pages - nav
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", README.read_text()))
    assert nav - {"index.md"} <= linked, (nav - {"index.md"}) - linked


# --- the README -------------------------------------------------------------------------------

def test_readme_fits_on_a_few_screens():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_test_command_is_what_ci_runs():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if "-m pytest" in line]
    readme = [line for line in code_lines(README.read_text()) if "-m pytest" in line]
    assert len(ci) == 1 and readme == ci


def test_readme_main_command_sets_up_and_runs_compare_on_the_embedded_data():
    setup = "python3.11 -m venv .venv && .venv/bin/pip install -r requirements.txt -e . && "
    main = [line for line in code_lines(README.read_text()) if "compare" in line
            and line.startswith(setup)]
    assert len(main) == 1
    argv = shlex.split(main[0][len(setup):])
    assert argv[:3] == [".venv/bin/python", "-m", "common.compare"]
    assert argv[argv.index("--dataset") + 1] == "mnist5k"
    # getting-started shows the same run without the set-up
    assert " ".join(argv) in (DOCS / "getting-started.md").read_text()


def test_readme_excerpt_is_the_report_on_the_comparing_page():
    """The README's excerpt of the main command's report: every cell equals the same column of
    the full report on docs/comparing.md (which carries the machine and the date)."""
    excerpt = table(README.read_text(), "framework")
    page = (DOCS / "comparing.md").read_text()
    full = {}
    for first in ("framework | epoch-1 loss", "framework | train img/s"):
        header, *rows = table(page, first)
        for row in rows:
            full.setdefault(row[0], {}).update(dict(zip(header, row)))
    header, *rows = excerpt
    assert [row[0] for row in rows] == list(NAMES.values())  # every framework
    for row in rows:
        for column, cell in zip(header, row):
            assert full[row[0]][column] == cell, (row[0], column)


# --- the preset table -------------------------------------------------------------------------

def _blocks(spec) -> list[str]:
    """What the preset table's "blocks" column must say of a spec, as words it must contain."""
    words = [spec.block + (" v2" if spec.preact else "")]
    if spec.groups > 1:
        words.append(f"{spec.groups}x{spec.base_width}d")
    elif spec.base_width != 64:
        words.append(f"width x{spec.base_width // 64}")
    if spec.shortcut == "pad":
        words.append("option-A shortcut")
    if spec.input_bn:
        words.append("input BN")
    if spec.stride_at == "last":
        words.append("stride in last block")
    return words


def _bias(spec) -> str:
    if isinstance(spec.conv_bias, bool):
        return "on" if spec.conv_bias else "off"
    return "+".join(sorted(spec.conv_bias))


def _num(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_preset_table_is_every_preset_with_the_oracles_counts():
    header, *rows = table((DOCS / "presets.md").read_text(), "preset")
    assert header == ["preset", "blocks", "in / classes", "conv bias", "trainable", "BN stats",
                      "total"]
    assert sorted(r[0] for r in rows) == sorted(PRESETS)
    for name, blocks, io, bias, trainable, stats, total in rows:
        spec = PRESETS[name]
        counts = param_counts(spec)
        assert (_num(trainable), _num(stats), _num(total)) == (
            counts.trainable, counts.non_trainable, counts.total), name
        assert io == f"{spec.in_channels} / {spec.num_classes}", name
        assert "+".join(sorted(bias.split("+"))) == _bias(spec), name
        said = {w.strip() for w in re.split(r",", blocks)}
        assert blocks.startswith(spec.block) and set(_blocks(spec)) <= said | {blocks}, name
        assert ("v2" in blocks) == spec.preact, name


@pytest.mark.parametrize("page", [p.name for p in sorted(DOCS.glob("*.md"))])
def test_pages_do_not_point_at_the_readme_for_a_fact(page):
    """Each fact lives on one page: a page links to another page, never to a README section."""
    text = (DOCS / page).read_text()
    assert not re.search(r"README, [A-Z]", text), page


def test_the_docs_extra_is_pinned_in_requirements():
    import tomllib
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["docs"]
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in extra}
    pinned = {line.split("==")[0].lower() for line in (ROOT / "requirements.txt").read_text()
              .splitlines() if "==" in line}
    assert {"mkdocs", "mkdocs-material", "mkdocstrings", "mkdocstrings-python"} <= names <= pinned
