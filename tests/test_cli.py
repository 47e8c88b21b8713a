"""The command line: `resnet3 <command>`, the older spellings (resnet-* scripts, python -m
common.<command>), and `guarded`, which answers an expected error with one line and lets a bug
keep its traceback."""
from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from common.commands import main as resnet3
from common.commands.cli import guarded
from common.core.errors import Error

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
ENTRY_MODULES = sorted(p.stem for p in (ROOT / "common").glob("*.py")
                       if p.stem not in ("__init__", "__main__"))


def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_resnet3_help_lists_every_command_with_its_line():
    done = run(str(BIN / "resnet3"), "--help")
    assert done.returncode == 0, done.stderr
    lines = [line.split(None, 1) for line in done.stdout.splitlines() if line.startswith("  ")]
    listed = {words[0]: words[1] for words in lines if len(words) == 2}
    assert {name: listed.get(name) for name in resnet3.COMMANDS} == {
        name: line for name, (_, line) in resnet3.COMMANDS.items()}


def test_resnet3_help_loads_no_framework():
    code = ("import sys\nfrom common.commands.main import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(set(sys.modules) & {'torch', 'tensorflow', 'keras', 'mxnet'}))")
    done = run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_every_command_of_resnet3_names_a_function_that_exists():
    for name, (target, _) in resnet3.COMMANDS.items():
        module, function = target.split(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function)), name


@pytest.mark.parametrize("argv", [["train", "--framework", "torch", "--help"],
                                  ["compare", "--help"]], ids=["train", "compare"])
def test_resnet3_command_help(argv):
    done = run(str(BIN / "resnet3"), *argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ") and "--dataset" in done.stdout


@pytest.mark.parametrize("name", sorted(resnet3.COMMANDS))
def test_every_commands_help_gives_its_docstrings_whole_first_paragraph(name, capsys):
    """The description of `resnet3 <command> --help` is the first paragraph of the command
    module's docstring, whole: a docstring's first line alone stopped mid-sentence ("... and
    print the largest")."""
    import importlib
    import re
    argv = [name, *(["--framework", "torch"] if name == "train" else []), "--help"]
    with pytest.raises(SystemExit) as done:
        resnet3.main(argv)
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    module = resnet3.COMMANDS[name][0].split(":")[0]
    if name == "train":
        module = "common.commands.train"
    doc = importlib.import_module(module).__doc__
    first = " ".join(doc.split("\n\n", 1)[0].split())
    assert re.search(r"[.:)]$", first), first
    assert first in text, (first, text[:600])


def test_resnet3_refuses_an_unknown_command_with_a_suggestion():
    done = run(sys.executable, "-m", "common", "comapre")
    assert done.returncode == 2
    assert "got 'comapre'; did you mean 'compare'?" in done.stderr


@pytest.mark.parametrize("argv, framework, rest", [
    (["--framework", "torch", "--dataset", "digits", "--epochs", "1"], "torch",
     ["--dataset", "digits", "--epochs", "1"]),
    (["--epochs", "2", "--framework=tf", "--compile"], "tf", ["--epochs", "2", "--compile"]),
])
def test_resnet3_train_runs_the_framework_train_script(monkeypatch, argv, framework, rest):
    calls = []
    monkeypatch.setattr("common.commands.train.main", lambda fw, a: calls.append((fw, a)) or 0)
    assert resnet3.main(["train", *argv]) == 0
    assert calls == [(framework, rest)]


def test_resnet3_train_needs_a_framework(capsys):
    with pytest.raises(SystemExit) as exit:
        resnet3.main(["train", "--epochs", "1"])
    assert exit.value.code == 2
    assert "--framework" in capsys.readouterr().err


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_script_answers_help(script):
    done = run(str(BIN / script), "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")


@pytest.mark.parametrize("name", ENTRY_MODULES)
def test_each_python_m_common_module_answers_help(name):
    done = run(sys.executable, "-m", f"common.{name}", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")


# --- guarded -------------------------------------------------------------------------------------

def raising(err: BaseException):
    @guarded
    def main(argv=None) -> int:
        raise err
    return main


class BadFlag(Error):
    pass


@pytest.mark.parametrize("err", [Error("--x: expected 1, got 2"), BadFlag("--x: expected 1, got 2"),
                                 FloatingPointError("loss: expected a finite value, got nan")],
                         ids=["Error", "subclass", "diverged"])
def test_guarded_answers_an_expected_error_with_one_line(err, capsys, monkeypatch):
    monkeypatch.delenv("RESNET_TRACEBACK", raising=False)
    assert raising(err)() == 2
    assert capsys.readouterr().err == f"error: {err}\n"


def test_guarded_answers_a_missing_file_of_the_user_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("RESNET_TRACEBACK", raising=False)
    missing = tmp_path / "no-such-file.safetensors"

    @guarded
    def main(argv=None) -> int:
        missing.read_bytes()
        return 0
    assert main() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: [Errno 2] No such file or directory: ") and err.count("\n") == 1
    assert str(missing) in err


@pytest.mark.parametrize("err", [ValueError("a bug"), OSError("no path in it"),
                                 KeyError("a bug")], ids=["ValueError", "OSError", "KeyError"])
def test_guarded_lets_a_bug_keep_its_traceback(err, monkeypatch):
    monkeypatch.delenv("RESNET_TRACEBACK", raising=False)
    with pytest.raises(type(err)):
        raising(err)()


def test_guarded_keeps_the_traceback_with_resnet_traceback(monkeypatch):
    monkeypatch.setenv("RESNET_TRACEBACK", "1")
    with pytest.raises(Error):
        raising(Error("--x: expected 1, got 2"))()


def test_guarded_answers_ctrl_c_with_130(capsys):
    assert raising(KeyboardInterrupt())() == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_guarded_answers_sigterm_with_143_and_says_terminated(capsys):
    """SIGTERM raises cli.Terminated in the command (its finally blocks run, as on Ctrl-C),
    reported as terminated, exit 143 (128 + SIGTERM), never as Ctrl-C; the handler before the
    command is put back after it."""
    import os
    import signal
    from common.commands.cli import Terminated

    ran_finally = []

    @guarded
    def main(argv=None) -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
            return 0
        finally:
            ran_finally.append(True)
    before = signal.getsignal(signal.SIGTERM)
    assert main() == 143 and ran_finally == [True]
    assert capsys.readouterr().err == "terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is before
    assert issubclass(Terminated, KeyboardInterrupt)  # code that stops children on Ctrl-C


SIGTERM_CHILD = """
import signal, sys, threading, time
from common.commands.cli import guarded, sigterm_to_the_main_thread
sigterm_to_the_main_thread()
mask = {}
later = threading.Thread(target=lambda: mask.update(
    blocked=signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])))
later.start(); later.join()
handled = sys.argv[1] == "handled"

def main():
    try:  # the signal may come as soon as the line is out
        print(mask["blocked"], flush=True)
        while True:
            time.sleep(0.01)
    finally:
        print("finally", flush=True)
sys.exit(guarded(main)() if handled else main())
"""


@pytest.mark.parametrize("handled", ["handled", "default"])
def test_sigterm_to_the_main_thread_blocks_it_in_later_threads_and_still_ends_the_script(
        handled):
    """cli.sigterm_to_the_main_thread (JAX's train script): a thread started after it blocks
    SIGTERM; the signal still reaches the main thread's handler (guarded: Terminated, its
    finally blocks, 143), or, with no handler, ends the process as by default (-15)."""
    import signal
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, handled], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "True\n"  # the later thread blocks SIGTERM
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait(30)
    if handled == "handled":
        assert (child.returncode, out, err) == (143, "finally\n", "terminated (SIGTERM)\n")
    else:
        assert child.returncode == -signal.SIGTERM and out == "", (child.returncode, out, err)


@pytest.mark.parametrize("argv, name", [
    (["train", "--framework", "torch", "--out", ""], "--out"),
    (["train", "--framework", "tf", "--weights", ""], "--weights"),
    (["train", "--framework", "mx", "--data-dir", ""], "--data-dir"),
    (["compare", "--out", ""], "--out"), (["convert", "", "b.pt"], "src"),
    (["convert", "a.pt", ""], "dst"), (["export", "", "--framework", "torch"], "output"),
    (["crosscheck", "--weights", ""], "--weights"), (["bench", "--out", ""], "--out")])
def test_an_empty_path_is_refused_not_taken_for_the_default(argv, name):
    """An empty value (an unset shell variable) for any path flag of any command: one usage
    error naming the flag, exit 2, before anything runs."""
    done = run(sys.executable, "-m", "common", *argv)
    assert done.returncode == 2, done.stderr
    assert f"argument {name}: expected a path, got ''" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
