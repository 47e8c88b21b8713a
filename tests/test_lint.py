"""ruff, with the rules in pyproject.toml's [tool.ruff], finds nothing in the project."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> str:
    """The venv's ruff (requirements.txt pins it): a missing one fails, it is never skipped."""
    here = Path(sys.executable).parent / "ruff"
    found = str(here) if here.exists() else shutil.which("ruff")
    assert found, "ruff is not installed: pip install -r requirements.txt"
    return found


def test_ruff_finds_nothing():
    done = subprocess.run([ruff(), "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_sees_a_planted_problem():
    """The configuration is read and its rules apply: an unused import and a private member
    reached from common/ are found (given on standard input; no file is written)."""
    done = subprocess.run([ruff(), "check", "--no-cache", "--output-format", "concise",
                           "--stdin-filename", "common/core/probe.py", "-"],
                          input='"""probe"""\nimport os\n\n\ndef f(p):\n    return p._actions\n',
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "F401" in done.stdout and "SLF001" in done.stdout, done.stdout
