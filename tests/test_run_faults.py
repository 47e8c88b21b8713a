"""Faults in a run's life, in every framework (docs/bad-inputs.md, second table): a run too
short to time, a full disk, weights that turn non-finite on the last step, two runs in one
--out, SIGTERM to compare and to a train script. Each test starts real processes, or mounts a
real small file system, and has a deadline."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from common.commands import compare
from common.commands.train import CHECKPOINT, main as train_main
from common.core.files import PARTIAL
from common.core.init import init_weights
from common.core.spec import get_spec
from common.formats.checkpoint import load_checkpoint
from common.frameworks import FRAMEWORKS, NAMES, load

ROOT = Path(__file__).resolve().parents[1]
# In this process, MXNet keeps the thread count it loaded with: --threads is left at its default.
TINY = ["--dataset", "digits", "--arch", "cifar_resnet20", "--resize", "16"]
CHILD = [*TINY, "--threads", "1"]  # for a train script or compare in a process of its own
ENV = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}


def command(main, *argv) -> tuple[int, str]:
    """A command's exit status and stderr, run in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(*argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def wait_for(condition, deadline: float, what: str):
    """condition()'s first true value, polled until `deadline` seconds have passed."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"expected {what} within {deadline:g} s")


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if PARTIAL in p.name)


# --- 1. a run too short to time ---------------------------------------------------------------

ONE_STEP = "n/a (one step per epoch, timed apart as the first)"


# The loop's timing, its lock on --out and compare's handling of its children are the same code
# for every framework (common.commands): the tests below run them in one, MXNet, the quickest to
# start. What a framework's own process does on SIGTERM is tested in every framework.
ONE = ["mx"]


@pytest.mark.parametrize("fw", ONE)
def test_a_run_too_short_to_time_reports_its_speed_as_missing(fw, tmp_path):
    """One step per epoch: that step is the first, timed apart, so there is no steady speed.
    compare writes its report with the figure as n/a and why; the train line says so too."""
    out = tmp_path / "cmp"
    done = subprocess.run([sys.executable, "-m", "common.commands.compare", *CHILD,
                           "--epochs", "1", "--limit", "32", "--batch-size", "32",
                           "--bench-rounds", "0", "--frameworks", fw, "--out", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "examples/sec n/a (one step, timed apart as the first) on cpu" in done.stdout
    results = (out / "report.md").read_text().split("## Results", 1)[1].split("##", 1)[0]
    row = next(line for line in results.splitlines() if line.startswith(f"| {NAMES[fw]}"))
    assert row.count(ONE_STEP) == 2, row  # examples/sec and s/epoch
    run = json.loads((out / fw / "run.json").read_text())
    assert run["train_examples_per_sec"] is None and run["history"][0]["examples_per_sec"] is None
    speed = compare.speed_section({fw: run}, [], [])
    assert speed.count("n/a (one step per epoch") == 1 and "n/a (not measured by the bench)" in speed


def test_a_report_without_test_examples_or_epochs_says_what_is_missing():
    """The other figures that can be missing: a run with no epoch, an epoch without a test
    accuracy."""
    params = {"trainable": 1, "non_trainable": 0, "total": 1}
    row = compare.results_row("torch", {"history": [], "params": params})
    assert row[1:5] == ["n/a (no epoch)"] * 4
    epoch = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_acc": None,
             "examples_per_sec": 10.0, "seconds": 2.0}
    row = compare.results_row("torch", {"history": [epoch], "params": params})
    assert row[4] == "n/a (no test examples)" and row[5:7] == ["10.0", "2.00"]


# --- 6. a full disk ----------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """small_disk(bytes): a folder on a tmpfs of that size, unmounted after the test whatever
    happens. Skipped, saying why, where no tmpfs can be mounted (mounting needs root)."""
    mounted = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True, text=True, timeout=30)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here (it needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder
    yield mount
    for folder in mounted:
        if subprocess.run(["umount", str(folder)], timeout=30).returncode:
            subprocess.run(["umount", "-l", str(folder)], timeout=30)


def checkpoint_bytes() -> int:
    spec = get_spec("cifar_resnet20", in_channels=1, num_classes=10)
    return sum(v.nbytes for v in init_weights(spec, 0).values())


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_a_full_disk_stops_training_with_one_line_and_keeps_the_last_checkpoint(fw, small_disk):
    """A file system with room for one checkpoint and a half: epoch 1's is written, epoch 2's
    cannot be (the old one stays until the new one is complete). One line names the path and
    the space needed; epoch 1's checkpoint is intact; no partial file is left."""
    need = checkpoint_bytes()
    disk = small_disk((need * 3 // 2) // 4096 * 4096)
    run = disk / "run"
    code, err = command(train_main, fw, [*TINY, "--epochs", "2", "--limit", "64",
                                         "--batch-size", "32", "--out", str(run)])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {run / CHECKPOINT}: expected ") and "MB free" in err, err
    assert "(no space left on device); the earlier checkpoint.safetensors there is kept" in err
    said_need = float(err.split(": expected ", 1)[1].split(" MB")[0])
    assert need / 1e6 <= said_need < need / 1e6 + 0.2, (err, need)  # the arrays and headers
    saved = load_checkpoint(run / CHECKPOINT)
    assert saved.epoch == 1 and all(np.isfinite(v).all() for v in saved.weights.values())
    assert partials(run) == []


# --- 8. weights that turn non-finite on the last step ------------------------------------------

class Diverging:
    """A framework's Adapter whose weights read as non-finite after `after` training steps, as
    they would after a step with a huge learning rate; the loss of that step stays finite."""

    def __init__(self, adapter_class, after: int):
        self.cls, self.after = adapter_class, after

    def __call__(self, *args, **kwargs):
        adapter = self.cls(*args, **kwargs)
        steps, step, get = [0], adapter.train_step, adapter.get_weights

        def train_step(x, y):
            steps[0] += 1
            return step(x, y)

        def get_weights():
            weights = get()
            if steps[0] > self.after:
                weights["stem.conv.weight"] = np.full_like(weights["stem.conv.weight"], np.inf)
            return weights
        adapter.train_step, adapter.get_weights = train_step, get_weights
        return adapter


DIVERGED = "weights: expected finite values after epoch 2, got"


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_weights_that_diverge_on_the_last_step_keep_the_last_finite_checkpoint(fw, tmp_path,
                                                                                monkeypatch):
    """Epoch 1 (2 steps) ends finite; epoch 2's last step turns the weights infinite with a
    finite loss. The run stops with one line, epoch 1's checkpoint stays, nothing non-finite
    is written, and --resume goes back to it and finishes."""
    package, run = load(fw), tmp_path / "run"
    flags = [*TINY, "--epochs", "2", "--limit", "64", "--batch-size", "32", "--out", str(run)]
    monkeypatch.setattr(package, "Adapter", Diverging(package.Adapter, after=3))
    code, err = command(train_main, fw, flags)
    assert code == 2 and "Traceback" not in err, err
    assert err == (f"error: {DIVERGED} inf in stem.conv.weight (the last steps diverged; try a "
                   f"lower --lr); the checkpoint of epoch 1 in {run} is kept\n")
    assert load_checkpoint(run / CHECKPOINT).epoch == 1
    assert not (run / "weights.safetensors").exists()
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    monkeypatch.undo()
    assert command(train_main, fw, [*flags, "--resume"])[0] == 0
    assert load_checkpoint(run / CHECKPOINT).epoch == 2


# --- 9. two runs, one --out --------------------------------------------------------------------

def train_process(fw: str, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"resnet_{fw}.train", *CHILD, *flags,
                             "--out", str(out)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def holds_lock(out: Path, pid: int) -> bool:
    try:
        return (out / ".lock").read_text().strip() == str(pid)
    except OSError:
        return False


IN_USE = "--out: expected a folder no other run is writing, got"


@pytest.mark.parametrize("fw", ONE)
def test_a_second_run_in_the_same_out_is_refused_with_the_first_ones_process(fw, tmp_path):
    """Two train processes, one --out: the second, started while the first runs, exits 2 with
    one line naming the folder and the first's process id; the first finishes its run."""
    out = tmp_path / "run"
    first = train_process(fw, out, "--epochs", "10", "--limit", "256", "--batch-size", "64")
    try:
        wait_for(lambda: holds_lock(out, first.pid) or first.poll() is not None, 120,
                 "the first run to hold --out")
        second = subprocess.run([sys.executable, "-m", f"resnet_{fw}.train", *CHILD, "--epochs",
                                 "1", "--out", str(out)], cwd=ROOT, env=ENV, capture_output=True,
                                text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second started"
        _, first_err = first.communicate(timeout=600)
    finally:
        first.kill()
        first.wait(60)
    assert second.returncode == 2, second.stderr
    assert second.stderr == (f"error: {IN_USE} {out}, in use by process {first.pid}; wait for "
                             f"it to end or choose another --out\n")
    assert first.returncode == 0, first_err
    assert json.loads((out / "run.json").read_text())["epochs"] == 10


@pytest.mark.parametrize("fw", ONE)
def test_a_killed_run_leaves_no_lock_behind(fw, tmp_path):
    """A run killed (SIGKILL) while it holds --out leaves its lock file, but not the lock: the
    next run there starts."""
    out = tmp_path / "run"
    flags = ["--limit", "256", "--batch-size", "64"]
    killed = train_process(fw, out, "--epochs", "50", *flags)
    try:
        wait_for(lambda: holds_lock(out, killed.pid), 120, "the run to hold --out")
    finally:
        killed.kill()
        killed.communicate(timeout=60)
    assert (out / ".lock").read_text().strip() == str(killed.pid)  # stale, and harmless
    again = ["--resume"] if (out / CHECKPOINT).exists() else []
    done = subprocess.run([sys.executable, "-m", f"resnet_{fw}.train", *CHILD, "--epochs", "1",
                           *flags, "--out", str(out), *again],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_compare_refuses_an_out_that_another_process_holds(tmp_path):
    """compare holds its --out as train does: refused, before any training, while another
    process holds it."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from common.core.files "
                               "import lock_folder\nwith lock_folder(sys.argv[1]):\n"
                               "    print('held', flush=True); time.sleep(120)", str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, err = command(compare.main, ["--out", str(tmp_path), "--bench-rounds", "0"])
    finally:
        holder.kill()
        holder.wait(60)
    assert code == 2 and err == (f"error: {IN_USE} {tmp_path}, in use by process {holder.pid}; "
                                 f"wait for it to end or choose another --out\n"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


# --- 12. SIGTERM -------------------------------------------------------------------------------

def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of a process started in a session of its own, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)


def children(pid: int) -> list[int]:
    """The live child processes of pid (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in "ZX":
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.parametrize("fw", ONE)
def test_sigterm_to_compare_stops_its_training_and_says_so(fw, tmp_path):
    """compare, SIGTERMed while a framework trains, stops that training process (checked by
    pid), says so, and exits 143."""
    out = tmp_path / "cmp"
    parent = subprocess.Popen([sys.executable, "-m", "common.commands.compare", *CHILD,
                               "--epochs", "50", "--limit", "256", "--batch-size", "64",
                               "--bench-rounds", "0", "--frameworks", fw, "--out", str(out)],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        child = wait_for(lambda: children(parent.pid), 60, "compare's training process")[0]
        wait_for(lambda: (out / fw / "metrics.jsonl").exists(), 300, "an epoch of training")
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=120)
    finally:
        kill_group(parent)
    assert parent.returncode == 143, err[-2000:]
    assert (f"== {NAMES[fw]}: terminated (SIGTERM); stopped its training (process {child}) and "
            f"every process it started") in err
    assert err.endswith("terminated (SIGTERM)\n"), err[-2000:]
    wait_for(lambda: not alive(child), 30, f"training process {child} to have ended")


def blocks_sigterm(pid: int) -> dict[str, bool]:
    """Each thread of a process ("name (id)") -> whether it blocks SIGTERM (/proc's SigBlk)."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = dict(line.split(":", 1) for line in (task / "status").read_text()
                          .splitlines())
        except OSError:  # the thread has ended
            continue
        threads[f"{status['Name'].strip()} ({task.name})"] = bool(
            int(status["SigBlk"], 16) >> (signal.SIGTERM - 1) & 1)
    return threads


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_sigterm_to_a_train_script_is_reported_as_terminated(fw, tmp_path):
    """A train script SIGTERMed while it trains says "terminated (SIGTERM)", not Ctrl-C, exits
    143, and leaves no partial file. JAX's blocks SIGTERM in every thread, XLA's and the main
    one, but the watcher that waits for it and hands it to the main thread
    (cli.sigterm_to_the_main_thread: delivered to one of XLA's threads, it aborted the script in
    glibc in 4 of 10 runs); the others block it in none."""
    out = tmp_path / "run"
    proc = train_process(fw, out, "--epochs", "50", "--limit", "256", "--batch-size", "64")
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists(), 300, "an epoch of training")
        threads = blocks_sigterm(proc.pid)
        takers = [name for name, blocked in threads.items() if not blocked]
        if fw == "jax":  # XLA's threads and the main one block it; the watcher waits for it
            assert len(threads) > 2 and len(takers) == 1, threads
            assert not takers[0].endswith(f"({proc.pid})"), threads
        else:
            assert takers == list(threads), threads
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait(60)
    assert proc.returncode == 143 and err.endswith("terminated (SIGTERM)\n"), err[-2000:]
    assert "Traceback" not in err and partials(out) == []


def test_sigterm_to_the_launcher_stops_every_process_and_says_terminated(tmp_path):
    """resnet-launch under guarded: SIGTERM stops every process it started (by pid) and is
    reported as terminated, exit 143, not as Ctrl-C."""
    from tests.test_launch import SCRIPT, pids
    (tmp_path / "w.py").write_text(SCRIPT)
    code = ("import sys; from common.commands.cli import guarded\n"
            "from common.commands.launch import launch\n"
            "@guarded\ndef main():\n"
            f"    r = launch('tf', 2, [{str(tmp_path / 'w.py')!r}, {str(tmp_path)!r}, 'none'])\n"
            "    print(r.failure, flush=True)\n    return r.returncode\n"
            "sys.exit(main())")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        started = pids(tmp_path, 2)
        parent.send_signal(signal.SIGTERM)
        out, _ = parent.communicate(timeout=60)
    finally:
        kill_group(parent)
    assert parent.returncode == 143 and "terminated (SIGTERM); stopped every process" in out, out
    assert len(started) == 4
    wait_for(lambda: not any(alive(p) for p in started), 30, "every launched process to end")
