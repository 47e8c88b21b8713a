"""resnet-launch itself: what each framework's processes are told, and that a failure, the
deadline or Ctrl-C stops every process it started (children included), saying which and why.
The engines' equivalence with one process is in tests/test_distributed_<fw>.py."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common.commands import launch as launcher
from common.commands.launch import launch, plan
from common.commands.train import Workers

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_tf_workers_get_one_cluster_and_their_own_index():
    procs = plan("tf", 3, ["-m", "resnet_tf.train"]).processes
    configs = [json.loads(env["TF_CONFIG"]) for _, _, env in procs]
    assert [name for name, _, _ in procs] == ["worker-0", "worker-1", "worker-2"]
    cluster = configs[0]["cluster"]["worker"]
    assert len(set(cluster)) == 3 and all(c.startswith("127.0.0.1:") for c in cluster)
    assert all(c["cluster"]["worker"] == cluster for c in configs)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert [env["RESNET3_RANK"] for _, _, env in procs] == ["0", "1", "2"]
    assert {env["RESNET3_WORKERS"] for _, _, env in procs} == {"3"}


def test_mx_gets_a_scheduler_a_server_and_workers_on_one_root():
    procs = plan("mx", 2, ["-m", "resnet_mx.train"]).processes
    roles = {name: env["DMLC_ROLE"] for name, _, env in procs}
    assert roles == {"scheduler": "scheduler", "server": "server", "worker-0": "worker",
                     "worker-1": "worker"}
    assert len({(env["DMLC_PS_ROOT_URI"], env["DMLC_PS_ROOT_PORT"]) for _, _, env in procs}) == 1
    assert {(env["DMLC_NUM_WORKER"], env["DMLC_NUM_SERVER"]) for _, _, env in procs} == {("2", "1")}
    assert procs[0][1][1:] == ["-m", "resnet_mx.distributed"]


def test_torch_runs_torchrun_standalone_or_with_a_rendezvous_on_the_first_host():
    (name, argv, env), = plan("torch", 2, ["-m", "resnet_torch.train", "--epochs", "1"]).processes
    assert argv[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert argv[-4:] == ["-m", "resnet_torch.train", "--epochs", "1"]
    (_, argv, _), = plan("torch", 4, ["x.py"], hosts=["a", "b"], host_rank=1,
                         port=29500).processes
    assert {"--nnodes=2", "--node-rank=1", "--master-addr=a", "--master-port=29500",
            "--nproc-per-node=2"} <= set(argv)


def test_several_hosts_split_the_ranks_and_only_the_first_runs_mxnets_scheduler():
    second = plan("mx", 4, ["x.py"], hosts=["a", "b"], host_rank=1, port=9000).processes
    assert [(n, e["RESNET3_RANK"], e["DMLC_PS_ROOT_URI"]) for n, _, e in second] == \
        [("worker-2", "2", "a"), ("worker-3", "3", "a")]
    tf = plan("tf", 4, ["x.py"], hosts=["a", "b"], host_rank=1, port=9000).processes
    assert json.loads(tf[0][2]["TF_CONFIG"])["cluster"]["worker"] == \
        ["a:9000", "a:9001", "b:9002", "b:9003"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(framework="keras", workers=2),
     "--framework: expected one of torch, tf, mx, jax, got 'keras'"),
    (dict(framework="tf", workers=3, hosts=["a", "b"], port=1),
     "--workers: expected a multiple of the 2 hosts, got 3"),
    (dict(framework="tf", workers=2, hosts=["a", "b"], host_rank=2, port=1),
     "--host-rank: expected 0..1, got 2"),
    (dict(framework="tf", workers=2, hosts=["a", "b"]), "--port: expected a port"),
])
def test_impossible_layouts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(command=["x.py"], **kwargs)


def test_print_hosts_gives_each_machine_its_command(capsys):
    assert launcher.main(["--framework", "tf", "--workers", "4", "--hosts", "a,b", "--port",
                          "9000", "--print-hosts", "--", "--epochs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"python -m common.commands.launch --framework tf --workers 4 --hosts a,b "
                     f"--host-rank {k} --port 9000 -- --epochs 1" for k in (0, 1)]


# A worker script for the process-control tests: it writes its pid and its child's pid (a
# grandchild of the launcher), then does what the test says.
SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, time
    rank = os.environ["RESNET3_RANK"]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(os.path.join(sys.argv[1], f"pids-{rank}"), "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    print(f"worker {rank} ready", flush=True)
    if rank == sys.argv[2]:
        time.sleep(1)
        print("something went wrong here", flush=True)
        sys.exit(3)
    time.sleep(300)
""")


def pids(folder: Path, n: int) -> list[int]:
    end = time.monotonic() + 60
    while len(list(folder.glob("pids-*"))) < n and time.monotonic() < end:
        time.sleep(0.1)
    return [int(p) for f in sorted(folder.glob("pids-*")) for p in f.read_text().split()]


def test_a_failed_worker_stops_the_others_and_is_named_with_its_last_lines(tmp_path):
    (tmp_path / "w.py").write_text(SCRIPT)
    t0 = time.monotonic()
    result = launch("tf", 2, [str(tmp_path / "w.py"), str(tmp_path), "1"], deadline=120)
    assert time.monotonic() - t0 < 60
    assert result.returncode == 3
    assert result.failure.startswith("worker-1 failed (exit status 3); its last lines:")
    assert "something went wrong here" in result.failure
    assert "worker 0 ready" in result.outputs["worker-0"]
    started = pids(tmp_path, 2)
    assert len(started) == 4 and not any(alive(p) for p in started)


def test_the_deadline_stops_every_process_and_their_children(tmp_path):
    (tmp_path / "w.py").write_text(SCRIPT)
    result = launch("tf", 2, [str(tmp_path / "w.py"), str(tmp_path), "none"], deadline=4)
    assert result.returncode == 124
    assert result.failure == ("deadline: expected the run to end within 4 s, got worker-0, "
                              "worker-1 still running; stopped them")
    started = pids(tmp_path, 2)
    assert len(started) == 4 and not any(alive(p) for p in started)


def test_ctrl_c_stops_every_process_and_exits_130(tmp_path):
    """The launcher takes SIGINT as Ctrl-C at a terminal, where the shell gives a foreground
    job SIGINT's default. A pytest started in the background by a script (`cmd &`) ignores
    SIGINT, its children inherit that, and Python then never raises KeyboardInterrupt (this
    test timed out so): the child puts the default back first."""
    (tmp_path / "w.py").write_text(SCRIPT)
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from common.commands.launch import launch; "
            f"r = launch('tf', 2, [{str(tmp_path / 'w.py')!r}, {str(tmp_path)!r}, 'none']); "
            "print(r.failure); sys.exit(r.returncode)")
    with subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True, start_new_session=True) as parent:
        started = pids(tmp_path, 2)
        parent.send_signal(signal.SIGINT)
        try:
            out, _ = parent.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # fail in 60 s, not when the workers' sleeps end
            for pid in (parent.pid, *started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise
    assert parent.returncode == 130 and "interrupted (Ctrl-C)" in out
    assert len(started) == 4 and not any(alive(p) for p in started)


def test_stop_ends_a_worker_whose_popen_lock_a_ctrl_c_left_taken(tmp_path):
    """A Ctrl-C that lands inside Popen.poll, between its lock's acquire and its try, leaves
    the lock taken for good; a launch that then waited on Popen.wait without a timeout would
    hang. stop reads from /proc whether the processes still run."""
    from common.commands.launch import Process, stop
    (tmp_path / "w.py").write_text(SCRIPT)
    env = {**os.environ, "RESNET3_RANK": "0"}
    popen = subprocess.Popen([sys.executable, str(tmp_path / "w.py"), str(tmp_path), "none"],
                             env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    started = pids(tmp_path, 1)
    assert popen._waitpid_lock.acquire(False)  # as the interrupted poll leaves it
    done = threading.Thread(target=stop, args=([Process("worker-0", popen)],), daemon=True)
    done.start()
    done.join(45)
    alive_after = [p for p in started if alive(p)]
    for pid in started:  # a failed run leaves nothing behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    popen._waitpid_lock.release()
    popen.wait()
    assert not done.is_alive(), "stop waited on the taken lock"
    assert len(started) == 2 and not alive_after


def test_the_command_reports_a_failed_train_script_as_one_error_line(capsys):
    # An unknown data set: each worker's train script stops at its flags, before any framework.
    code = launcher.main(["--framework", "tf", "--workers", "2", "--deadline", "120", "--",
                          "--dataset", "imagenet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: resnet-launch (tf, 2 workers): worker-")
    assert "failed (exit status 2); its last lines:" in err
    assert "--dataset: expected one of" in err and "got 'imagenet'" in err


def test_workers_share_a_global_batch_equally_and_in_order():
    x, y = np.arange(12 * 2).reshape(12, 2), np.arange(12)
    shares = [Workers({"RESNET3_WORKERS": "3", "RESNET3_RANK": str(k)}).share(x, y)
              for k in range(3)]
    assert np.array_equal(np.concatenate([s[1] for s in shares]), y)
    assert np.array_equal(np.concatenate([s[0] for s in shares]), x)
    assert Workers({"RESNET3_WORKERS": "2", "RANK": "1"}).rank == 1  # torchrun's variables
    torchrun = Workers({"WORLD_SIZE": "2", "RANK": "1"})  # torchrun -m resnet_torch.train
    assert (torchrun.count, torchrun.rank, torchrun.first) == (2, 1, False)
    assert Workers({}).count == 1 and Workers({}).first
    with pytest.raises(ValueError, match="RESNET3_RANK: expected 0..1, got 2"):
        Workers({"RESNET3_WORKERS": "2", "RESNET3_RANK": "2"})


def test_a_global_batch_the_workers_cannot_share_is_refused(tmp_path, capsys):
    from common.commands.train import main
    env = {"RESNET3_WORKERS": "2", "RESNET3_RANK": "0"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main("torch", ["--dataset", "digits", "--batch-size", "33", "--epochs", "1",
                              "--out", str(tmp_path / "run")]) == 2
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert ("error: --batch-size: expected a multiple of the 2 workers (it is the global batch, "
            "shared equally), got 33") in capsys.readouterr().err


# --- the train scripts under the launcher ----------------------------------------------------

TRAIN = ["--arch", "cifar_resnet20", "--dataset", "digits", "--limit", "128", "--resize", "0",
         "--batch-size", "32", "--threads", "1", "--lr", "0.1", "--momentum", "0.9"]
RUN_FILES = {"checkpoint.safetensors", "curves.png", "metrics.jsonl", "run.json",
             "weights.safetensors", ".lock"}  # .lock: the first worker's hold on --out


def launched(framework: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "common.commands.launch", "--framework", framework,
                          "--workers", "2", "--deadline", "240", "--", *TRAIN, "--out", str(out),
                          *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return run


@pytest.fixture(scope="module", params=["torch", "tf", "mx", "jax"])
def launched_run(request, tmp_path_factory) -> tuple[str, Path, subprocess.CompletedProcess]:
    """One launched run per framework, shared by the two tests below: 2 workers, one epoch of
    one global batch of 32 (one step)."""
    out = tmp_path_factory.mktemp(f"launched-{request.param}") / "run"
    return request.param, out, launched(request.param, out, "--epochs", "1", "--limit", "32")


def test_a_launched_run_is_written_once_by_the_first_worker(launched_run):
    """The first worker alone writes the run folder and speaks: one line per epoch. (Resuming
    a launched run, stopped mid-run, to the uninterrupted weights: tests/test_two_hosts.py, in
    every framework.)"""
    _, out, run = launched_run
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert run.stdout.count("epoch 1/1: loss") == 1
    summary = json.loads((out / "run.json").read_text())
    assert summary["workers"] == 2 and summary["sync_bn"] is False
    assert [(r["examples"], r["test_examples"]) for r in summary["history"]] == [(32, 359)]


def test_compare_runs_each_framework_on_its_engine_with_workers(tmp_path):
    out = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "common.commands.compare", "--frameworks", "torch,mx",
                          "--workers", "2", "--bench-rounds", "0", *TRAIN, "--epochs", "1",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for fw in ("torch", "mx"):
        summary = json.loads((out / fw / "run.json").read_text())
        assert summary["workers"] == 2 and summary["threads"] == 1
        assert summary["history"][0]["examples"] == 128
    assert "2 worker processes per framework" in (out / "report.md").read_text()
    assert "-m common.commands.launch --framework torch --workers 2 --" in run.stdout


def test_a_launched_runs_metrics_are_the_single_process_figures(launched_run):
    """metrics.jsonl of 2 workers against one process on the same data: one global batch of 32
    (one step), and digits' 359 test examples, which 2 workers cannot split evenly. The train
    loss is the mean over the 32 examples of the loss each worker's share gives from the shared
    initial weights (its own BatchNorm statistics, without --sync-bn), to float32 rounding;
    the train accuracy is their correct count; the test accuracy is one process's, evaluating
    the run's final weights on the whole test set, exactly."""
    from common.commands.train import evaluate
    from common.core.data import batches, load_dataset
    from common.core.init import init_weights
    from common.core.spec import get_spec
    from common.core.weights import load_weights
    from tests.helpers import MODULES
    framework, out, _ = launched_run
    row = [json.loads(line) for line in (out / "metrics.jsonl").open()][-1]
    data = load_dataset("digits").limit(32)
    spec = get_spec("cifar_resnet20", in_channels=data.in_channels, num_classes=data.num_classes)
    (xb, yb), = batches(data.train_x, data.train_y, 32, None, seed=0, epoch=0)
    losses, correct = [], 0
    for share in (slice(0, 16), slice(16, 32)):  # each worker's contiguous half
        one = MODULES[framework].Adapter(spec, init_weights(spec, 0))
        losses.append(one.loss_and_grads(xb[share], yb[share])[0])
        correct += int((one.logits(xb[share], training=True).argmax(1) == yb[share]).sum())
    assert row["examples"] == 32 and row["test_examples"] == 359
    assert row["train_loss"] == pytest.approx(float(np.mean(losses)), rel=1e-5, abs=1e-6)
    assert row["train_acc"] == correct / 32
    final = MODULES[framework].Adapter(spec, load_weights(out / "weights.safetensors"))
    assert row["test_acc"] == evaluate(final, data.test_x, data.test_y, 32, None)
