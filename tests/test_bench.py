"""resnet-bench: FLOP counts, the reference steps, the A B interleaving, and the command end to end.

Speed itself is never asserted here (it is measured by the bench and reported); these tests check
that the bench measures what it says it measures.
"""
import importlib
import json
import subprocess
import sys
from argparse import Namespace

import numpy as np
import pytest

from common.commands import bench
from common.core import devices
from common.frameworks import FRAMEWORKS, NAMES
from common.core.oracle import flops, param_counts
from common.core.spec import SpecError, get_spec

REFERENCES = {fw: importlib.import_module(f"resnet_{fw}.reference") for fw in FRAMEWORKS}


@pytest.mark.parametrize("arch, gmacs", [
    ("resnet18", 1.81), ("resnet34", 3.66), ("resnet50", 4.09), ("resnet101", 7.80),
    ("resnet152", 11.51), ("resnext50_32x4d", 4.23)])
def test_flops_match_torchvisions_published_counts(arch, gmacs):
    """torchvision's model table lists multiply-accumulates at 224 px under "GFLOPS"."""
    assert round(flops(get_spec(arch), 224) / 2e9, 2) == gmacs


def test_flops_follow_the_input_size_and_the_phase():
    spec = get_spec("d2l_resnet18")
    # 96 px: every feature map is (96/224)^2 of the 224 px one up to the rounding of odd sizes.
    assert flops(spec, 96) < flops(spec, 224) * (96 / 224) ** 2 * 1.05
    assert flops(spec, 96, "train") == 3 * flops(spec, 96)
    # The dense layer costs 512 multiply-accumulates per class: ten more classes, 2 * 5120 more.
    assert flops(get_spec("d2l_resnet18", num_classes=20), 96) - flops(spec, 96) == 2 * 512 * 10
    with pytest.raises(SpecError, match="phase: expected 'infer' or 'train', got 'eval'"):
        flops(spec, 96, "eval")


@pytest.mark.parametrize("fw", FRAMEWORKS)
@pytest.mark.parametrize("arch", ["d2l_resnet18", "resnet50", "resnet50_v2", "resnext26_4x32d",
                                  "cifar_resnet20"])
def test_reference_network_is_the_specs_network(fw, arch):
    """The plain reference builds the same network as the project (every block kind, groups,
    pre-activation, projection BN, option-A shortcut), so the ratio compares like with like."""
    spec = get_spec(arch)
    counts = param_counts(spec)
    assert REFERENCES[fw].count_params(REFERENCES[fw].network(spec)) == (counts.trainable,
                                                                         counts.non_trainable)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_reference_steps_train_and_infer(fw):
    ref = REFERENCES[fw]
    spec = get_spec("cifar_resnet20")
    logits = ref.make_step(spec, "infer", 4, 16)()
    assert np.shape(logits) == (4, 10) and np.all(np.isfinite(logits))
    step = ref.make_step(spec, "train", 4, 16, lr=0.1)
    losses = [step()[0] for _ in range(4)]
    ref.sync()
    assert losses[-1] < losses[0], losses  # SGD on one fixed batch fits it
    assert ref.matmul_gflops(n=128, seconds=0.05) > 0


def framework_versions() -> dict[str, str]:
    """Each framework's own __version__, read from the framework, not from the project."""
    names = {"torch": "torch", "tf": "tensorflow", "mx": "mxnet", "jax": "jax"}
    return {fw: importlib.import_module(names[fw]).__version__ for fw in FRAMEWORKS}


def test_what_ran_gives_each_frameworks_version_its_libraries_and_the_cpu_flags():
    lines = bench.what_ran(FRAMEWORKS)
    assert len(lines) == len(FRAMEWORKS) + 1
    for fw, line in zip(FRAMEWORKS, lines):
        assert line.startswith(f"{NAMES[fw]} {framework_versions()[fw]}"), line
        assert ("oneDNN" if fw != "jax" else "XLA xla_extension") in line, line
    assert "BLAS MKL" in lines[0] and "BLAS OpenBLAS" in lines[FRAMEWORKS.index("mx")]
    # The flags line says, for AVX-512, its bf16 and AMX, what common.core.devices detects.
    said = dict(item.rsplit(" ", 1) for item in lines[-1].removeprefix("CPU flags: ").split(", "))
    flags = devices.cpu()[1]
    assert {"avx512f", "avx512_bf16", "amx_bf16"} <= set(said)
    assert said == {f: "yes" if f in flags else "no" for f in said}
    # From bench rows (each framework's own process), and a framework whose process failed.
    rows = [{"framework": "torch", "version": "9.9", "libraries": {"oneDNN": "v1, on"}}]
    assert bench.what_ran(["torch", "mx"], rows)[:2] == [
        "PyTorch 9.9: oneDNN v1, on", "MXNet Gluon: not reported (its bench process failed)"]


class Recorder:
    """A framework stand-in that records the order of the steps the bench runs."""

    def __init__(self):
        self.calls = []
        outer = self

        class Adapter:
            def __init__(self, spec, weights, precision="fp32", compile=False,
                         channels_last=False, device="auto"):
                outer.calls.append(("init", precision, compile, channels_last))
                self.device = device  # the bench runs the reference where the adapter runs

            def train_step(self, x, y):
                outer.calls.append("A")
                return 0.0, 0

            def eval_step(self, x):
                outer.calls.append("A")
                return np.zeros((len(x), 10), np.float32)

        self.Adapter = Adapter

    def make_step(self, spec, phase, b, s, precision="fp32", compile=False, device="cpu",
                  channels_last=False):
        self.calls.append(("reference on", device, channels_last))
        return lambda: self.calls.append("B")

    def sync(self):
        self.calls.append("|")


def test_bench_alternates_project_and_reference_steps():
    fake = Recorder()
    args = Namespace(batch_size=2, input_size=8, precision="bf16", compile=True, device="cpu",
                     channels_last=True, warmup=1, rounds=3, steps=2)
    row = bench.measure(fake, fake, get_spec("cifar_resnet20"), "train", args)
    # the speed options reach both sides
    assert fake.calls[:2] == [("init", "bf16", True, True), ("reference on", "cpu", True)]
    assert row["device"] == "cpu"
    # first steps (each waited for), one warm-up pair, then rounds of A A | B B |
    assert "".join(c for c in fake.calls[2:]) == "A|B|" + "AB|" + "AA|BB|" * 3
    ours, ref = row["ours"], row["ref"]
    assert len(ours["rounds_s"]) == len(ref["rounds_cpu_s"]) == 3
    assert row["ratio_wall"] == np.median(np.divide(ref["rounds_s"], ours["rounds_s"]))
    assert row["ratio_cpu"] == np.median(np.divide(ref["rounds_cpu_s"], ours["rounds_cpu_s"]))
    assert ours["median_s"] == np.median(ours["rounds_s"])
    assert row["ours"]["img_per_s"] == pytest.approx(2 / row["ours"]["median_s"])
    assert row["ours"]["min_s"] <= row["ours"]["median_s"] <= row["ours"]["max_s"]



def sleep_for(seconds):
    """Wall time without CPU time: a step that waits (for a device, for I/O)."""
    import time
    time.sleep(seconds)


def spin_for(seconds):
    """CPU time: a step that computes for `seconds` of this process's CPU time."""
    import time
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


class Timed(Recorder):
    """A framework stand-in whose own step sleeps and whose reference step spins, each for
    STEP seconds: the same wall time (at least), CPU time only on the reference's side."""
    STEP = 0.02

    def __init__(self):
        super().__init__()
        self.Adapter.train_step = lambda adapter, x, y: (sleep_for(self.STEP), (0.0, 0))[1]

    def make_step(self, spec, phase, b, s, precision="fp32", compile=False, device="cpu",
                  channels_last=False):
        return lambda: spin_for(self.STEP)


def test_cpu_figures_come_from_cpu_time_not_wall_time():
    """img/CPU-s and the CPU ratio read the process's CPU time: a step that sleeps costs
    almost no CPU (far more images per CPU-second than per second), one that spins for 20 ms
    of CPU time costs exactly that (b / 0.02 images per CPU-second, whatever the load makes of
    its wall time). Computed from wall time, both would equal img/s."""
    args = Namespace(batch_size=4, input_size=8, precision="fp32", compile=False,
                     channels_last=False, device="cpu",
                     warmup=0, rounds=3, steps=2)
    row = bench.measure(Timed(), Timed(), get_spec("cifar_resnet20"), "train", args)
    ours, ref = row["ours"], row["ref"]
    assert ours["img_per_s"] <= 4 / Timed.STEP * 1.01  # it slept at least 20 ms a step
    assert ours["img_per_cpu_s"] > 10 * ours["img_per_s"], ours
    assert ref["img_per_cpu_s"] == pytest.approx(4 / Timed.STEP, rel=0.1), ref
    assert all(c >= Timed.STEP * 0.99 for c in ref["rounds_cpu_s"]), ref
    assert row["ratio_cpu"] > 10 and row["ratio_cpu"] == np.median(
        np.divide(ref["rounds_cpu_s"], ours["rounds_cpu_s"]))
    table = bench.table_rows([row | {"framework": "torch", "gflop_per_image": 1.0,
                                     "peak_share": 0.5}])[0]
    assert table[bench.HEADER.index("img/CPU-s")] == f"{ours['img_per_cpu_s']:.1f}"


def test_peak_share_uses_the_best_probe_of_the_run():
    rows = [{"framework": "torch", "matmul_gflops": 100.0, "gflop_per_image": 2.0,
             "ours": {"img_per_s": 10.0}},
            {"framework": "tf", "matmul_gflops": 400.0, "gflop_per_image": 2.0,
             "ours": {"img_per_s": 50.0}},
            {"framework": "mx", "phase": "train", "error": "no bf16"}]
    bench.finish(rows)
    assert [r.get("peak_share") for r in rows] == [0.05, 0.25, None]


def test_bench_refuses_bad_flags():
    for argv, message in ((["--steps", "0"], "--steps: expected a positive integer, got '0'"),
                          (["--frameworks", "torch,keras"], "--frameworks: expected names from "
                                                            "torch,tf,mx,jax, got 'torch,keras'"),
                          (["--frameworks", "torch,mxnet"], "got 'torch,mxnet'; did you mean "
                                                            "'mx'?"),
                          (["--arch", "d2l_resnet_18"], "did you mean 'd2l_resnet18'"),
                          (["--input-size", "0"], "--input-size: expected a positive integer, "
                                                  "got '0'")):
        done = subprocess.run([sys.executable, "-m", "common.commands.bench", *argv],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_bench_command_measures_every_framework(tmp_path):
    """The command end to end on a small network: a row per framework and phase, figures that
    add up, and the files it promises."""
    argv = ["--arch", "cifar_resnet20", "--input-size", "16", "--batch-size", "8", "--steps", "1",
            "--rounds", "2", "--warmup", "0", "--threads", "1", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "common.commands.bench", *argv], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert [(r["framework"], r["phase"]) for r in rows] == [
        (fw, phase) for fw in FRAMEWORKS for phase in ("infer", "train")]
    spec = get_spec("cifar_resnet20")
    for r in rows:
        assert "error" not in r, r
        assert r["gflop_per_image"] == flops(spec, 16, r["phase"]) / 1e9
        assert r["ratio_wall"] == np.median(np.divide(r["ref"]["rounds_s"], r["ours"]["rounds_s"]))
        assert 0 < r["peak_share"] and r["peak_rss_mib"] > 50 and r["data_seconds"] > 0
        assert r["ours"]["first_step_s"] > 0 and r["machine"]["cores"] >= 1
    text = (tmp_path / "bench.md").read_text()
    assert "Machine:" in text and "| framework | phase |" in text and "--threads 1" in text
    versions = framework_versions()
    for fw in FRAMEWORKS:
        assert f"- {NAMES[fw]} {versions[fw]}" in text.split("What ran:")[1], text
    assert f"- {bench.cpu_flags_line()}" in text
    for name in ("PyTorch", "TensorFlow/Keras", "MXNet Gluon", "JAX/Flax"):
        assert name in done.stdout


def test_latency_percentiles_show_the_spread_of_the_calls():
    """198 calls of 1 ms and 2 of 100 ms: the median and p90 stay at 1 ms, p99 rises (numpy's
    linear interpolation: 1 + 0.01 * 99), the max is the slow call."""
    figures = bench.latency_figures([0.001] * 198 + [0.1] * 2)
    assert figures["calls"] == 200
    assert figures["p50_ms"] == pytest.approx(1.0) and figures["p90_ms"] == pytest.approx(1.0)
    assert figures["p99_ms"] == pytest.approx(1.99) and figures["max_ms"] == pytest.approx(100)
    assert figures["mean_ms"] == pytest.approx((198 + 200) / 200)


def test_latency_times_single_image_calls_after_warm_up():
    """One real framework: the first call apart, the warm-up untimed, then each timed call of
    one image through the adapter, with the framework's per-call mode."""
    from common.frameworks import load
    args = Namespace(input_size=8, precision="fp32", compile=False, channels_last=False,
                     device="cpu", warmup=0,
                     latency_calls=30)
    row = bench.latency(load("torch"), REFERENCES["torch"], get_spec("cifar_resnet20"), args)
    assert row["calls"] == 30 and row["batch_size"] == 1 and row["phase"] == "latency"
    assert row["mode"] == "eager (operator by operator)" == REFERENCES["torch"].call_mode(False)
    assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
    calls = []
    fake = Recorder()
    fake.Adapter.eval_step = lambda adapter, x: calls.append(x.shape)
    fake.call_mode = lambda compile: "graph (fake)"
    row = bench.latency(fake, fake, get_spec("cifar_resnet20"), args)
    assert calls == [(1, 3, 8, 8)] * (1 + bench.LATENCY_WARMUP + 30) and row["mode"] == "graph (fake)"
    table = bench.tables([row | {"framework": "torch"}])
    assert "p99 ms" in table and "graph (fake)" in table and "img/s" not in table


def fake_rows(framework, args, log=print):
    """run_framework's rows without a process: img/s = 100 x the batch size."""
    return [{"framework": framework, "phase": phase, "batch_size": b, "version": "1.0",
             "libraries": {"BLAS": "fake"}, "matmul_gflops": 10.0, "gflop_per_image": 0.01,
             "ratio_wall": 1.0, "ratio_cpu": 1.0, "peak_rss_mib": 100.0, "data_share": 0.01,
             "ours": {"median_s": 0.01, "min_s": 0.01, "max_s": 0.01, "first_step_s": 0.1,
                      "img_per_s": 100.0 * b, "img_per_cpu_s": 100.0 * b},
             "ref": {"img_per_s": 100.0 * b}}
            for b in bench.batch_sizes(args) for phase in ("infer", "train")]


def test_batch_size_sweep_is_one_command_with_a_table_and_a_plot(tmp_path, monkeypatch, capsys):
    argv = ["--frameworks", "torch,mx", "--batch-sizes", "1,8,32", "--out", str(tmp_path)]
    args = bench.parser().parse_args(argv)
    # The worker gets the sweep (one process per framework, every batch size in it).
    again = bench.parser().parse_args(bench.worker_command("torch", args)[3:])
    assert again.batch_sizes == (1, 8, 32) and again.worker == "torch"
    monkeypatch.setattr(bench, "run_framework", fake_rows)
    assert bench.main(argv) == 0
    text = (tmp_path / "bench.md").read_text()
    sweep = [line for line in text.splitlines() if line.startswith("| PyTorch | train | 100.0")]
    assert sweep == ["| PyTorch | train | 100.0 | 800.0 | 3200.0 |"], text
    assert "| framework | phase | img/s at 1 | img/s at 8 | img/s at 32 |" in text
    assert "batch 1,8,32" in text and "![img/s per batch size](sweep.png)" in text
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = bench.sweep_series(fake_rows("mx", args))
    assert series["MXNet Gluon infer"] == [(1, 100.0), (8, 800.0), (32, 3200.0)]


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_each_frameworks_speed_options_are_keywords_its_plain_step_takes(fw):
    """--tuned passes SPEED_OPTIONS' keywords to make_step: each must be one it accepts."""
    import inspect
    ref = REFERENCES[fw]
    assert ref.SPEED_OPTIONS, fw
    for name, kwargs in ref.SPEED_OPTIONS.items():
        inspect.signature(ref.make_step).bind(None, "infer", 1, 8, **kwargs)  # TypeError if not


class Options:
    """A reference stand-in with two speed options: "fast" (same logits) and "lossy" (logits
    off by 1e-2 of their scale); "fast + lossy" fails as an option this build lacks would."""
    SPEED_OPTIONS = {"fast": {"compile": True}, "lossy": {"precision": "bf16"}}

    def __init__(self):
        self.built, self.calls = [], []

    def make_step(self, spec, phase, b, s, precision="fp32", compile=False, device="cpu",
                  channels_last=False):
        self.built.append((phase, b, s, precision, compile))
        if compile and precision == "bf16":
            raise RuntimeError("no bf16 compiler here\nsecond line")
        logits = np.full((b, 10), 1.0) + (0.01 if precision == "bf16" else 0.0)
        name = "+".join(n for n, on in (("fast", compile), ("lossy", precision == "bf16")) if on)
        return lambda: (self.calls.append(name or "default"), logits)[1]

    def sync(self):
        pass


def test_tuned_tries_every_combination_on_the_same_batch_in_interleaved_rounds():
    ref = Options()
    args = Namespace(batch_size=4, input_size=8, device="auto", warmup=0, rounds=2, steps=1,
                     tolerance=1e-3)
    rows = bench.tuned(ref, get_spec("cifar_resnet20"), "infer", args)
    assert [r["config"] for r in rows] == ["default (fp32)", "fast", "lossy", "fast + lossy"]
    assert {b for _, b, *_ in ref.built} == {4} and ("infer", 4, 8, "fp32", False) in ref.built
    assert rows[3]["error"] == "RuntimeError: no bf16 compiler here"
    # Each round visits every configuration that built, in turn (after their first calls and
    # the default's rebuild, which checks that a step reproduces its weights).
    assert ref.calls[-6:] == ["default", "fast", "lossy"] * 2
    assert rows[0]["rebuilt_difference"] == 0.0
    assert [r.get("within") for r in rows] == [True, True, False, None]
    assert rows[2]["difference"] == pytest.approx(0.01)


def judged(speed_of_fast: float) -> list[dict]:
    """judge() on made-up logits and round times: default 10 ms, fast speed_of_fast, lossy 2 ms."""
    logits = np.array([[2.0, -1.0]])
    rows = [{"phase": "train", "config": c, "options": o, "logits": logits + d,
             "first_step_s": 0.1}
            for c, o, d in (("default (fp32)", [], 0.0), ("fast", ["fast"], 1e-4),
                            ("lossy", ["lossy"], 0.02))]
    wall = {(): [0.010, 0.012], ("fast",): [speed_of_fast] * 2, ("lossy",): [0.002, 0.002]}
    return [r | {"framework": "torch", "batch_size": 8}
            for r in bench.judge(rows, wall, 8, 1e-3)]


def test_tuned_crowns_the_fastest_configuration_within_the_tolerance_only():
    rows = judged(0.005)
    assert [r.get("best") for r in rows] == [None, True, None]
    assert rows[1]["speedup"] == pytest.approx(np.median([2.0, 2.4]))
    assert rows[1]["difference"] == pytest.approx(1e-4 / 2) and rows[2]["within"] is False
    assert bench.verdicts(rows) == [
        "PyTorch train, batch 8: won: fast, 2.20x the fp32 default (logits within 5.0e-05 of "
        "its scale, tolerance 0.001); beyond the tolerance, not crowned: lossy (1.0e-02, 5.50x)"]
    table = bench.tables(rows)
    assert "yes, fastest" in table and "NO (not crowned)" in table
    # The share of the FP32 peak: 0.01 GFLOP/img at 8 / 0.005 img/s against a 100 GFLOP/s probe.
    peaked = bench.finish([r | {"gflop_per_image": 0.01, "matmul_gflops": 100.0} for r in rows])
    assert peaked[1]["peak_share"] == pytest.approx(0.16)
    assert bench.verdicts(peaked)[0].split("tolerance 0.001)")[1].startswith(
        ", 16.0% of the FP32 peak")
    # Slower than the default: the default keeps the crown.
    assert "the fp32 default is the fastest within 0.001" in bench.verdicts(judged(0.02))[0]


def test_a_figure_whose_rounds_moved_more_than_three_percent_says_so_beside_it():
    assert bench.moved([0.0100, 0.0101, 0.0102]) == ""  # 2%: within the contract's 3%
    assert bench.moved([0.010, 0.011, 0.0105]) == " (moved 10% between rounds)"
    row = fake_rows("torch", Namespace(batch_size=8, latency=False, batch_sizes=None))[0]
    row["ours"]["rounds_s"], row["ref"]["rounds_s"] = [0.010, 0.012, 0.010], [0.01, 0.01]
    cells = bench.table_rows([row | {"peak_share": 0.5}])[0]
    assert cells[bench.HEADER.index("ms/step median (min-max)")].endswith(
        "(moved 20% between rounds)")
    assert cells[bench.HEADER.index("ref img/s")] == "800.0"  # steady: no mark


def test_pytorchs_onednn_graph_option_fuses_its_inference_graph_and_refuses_training():
    import torch
    ref = REFERENCES["torch"]
    spec = get_spec("cifar_resnet20")
    default = ref.make_step(spec, "infer", 2, 8)()
    fused = ref.make_step(spec, "infer", 2, 8, onednn_fusion=True)
    for _ in range(3):  # TorchScript's profiling executor fuses on a later call
        logits = fused()
    assert "oneDNNFusionGroup" in str(torch.jit.last_executed_optimized_graph())
    assert np.abs(logits - default).max() <= 1e-5 * np.abs(default).max()
    for phase, compile in (("train", False), ("infer", True)):
        with pytest.raises(NotImplementedError, match="expected inference without torch.compile"):
            ref.make_step(spec, phase, 2, 8, onednn_fusion=True, compile=compile)


def test_tuned_in_a_process_options_process_names_its_rows_with_the_option_first():
    """In the worker of a process option every configuration is measured as usual, named and
    marked with the option first, and keeps its logits for the driver to judge across
    processes; the main process keeps only its fp32 default's."""
    args = Namespace(batch_size=4, input_size=8, device="cpu", warmup=0, rounds=1, steps=1,
                     tolerance=1e-3)
    main = bench.tuned(Options(), get_spec("cifar_resnet20"), "infer", args)
    assert [("logits" in r) for r in main] == [True, False, False, False]
    extra = bench.tuned(Options(), get_spec("cifar_resnet20"), "infer",
                        Namespace(**vars(args), process_option="oneDNN off"))
    assert [r["config"] for r in extra] == ["oneDNN off", "oneDNN off + fast",
                                            "oneDNN off + lossy", "oneDNN off + fast + lossy"]
    assert [r["options"] for r in extra][:2] == [["oneDNN off"], ["oneDNN off", "fast"]]
    assert all(r["process_option"] == "oneDNN off" for r in extra)
    assert extra[2]["logits"] == np.full((4, 10), 1.01, np.float32).tolist()
    assert "logits" not in extra[3]  # it failed
    json.dumps(extra)  # as the worker prints them


def printed(option, walls, offsets):
    """--tuned rows of TensorFlow, batch 8, as a worker prints them: judge()'s figures against
    its own process's default, logits 2 and -1 plus each configuration's offset (kept in every
    row of a process option's process, in the default's alone in the main one)."""
    base = np.array([[2.0, -1.0]])
    rows = bench.judge([{"phase": "train", "config": " + ".join(c) or "default (fp32)",
                         "options": list(c), "first_step_s": 0.1, "logits": base + d}
                        for c, d in offsets.items()], walls, 8, 1e-3)
    for r, (c, d) in zip(rows, offsets.items()):
        if option or not c:
            r["logits"] = (base + d).tolist()
        if option:
            r |= {"config": " + ".join((option, *c)), "options": [option, *c],
                  "process_option": option}
    return [r | {"framework": "tf", "batch_size": 8} for r in rows]


def main_rows():
    """The main process: default 11 ms (median), fast 2.2x within, lossy 5.5x beyond."""
    return printed(None, {(): [0.010, 0.012], ("fast",): [0.005] * 2, ("lossy",): [0.002] * 2},
                   {(): 0.0, ("fast",): 1e-4, ("lossy",): 0.02})


def switch_rows(default_s):
    """The process of the option "switch": its default at default_s, its fast at half of it;
    both 4e-4 off the main default's logits (and 0 off their own default's)."""
    return printed("switch", {(): [default_s] * 2, ("fast",): [default_s / 2] * 2},
                   {(): 4e-4, ("fast",): 4e-4})


def test_a_process_options_rows_are_judged_against_the_main_processs_fp32_default():
    """Across processes: logits against the main default's, speedup = own interleaved speedup
    x (main default median / own default median), marked not interleaved; the crown goes to
    the fastest within the tolerance of either process."""
    rows = bench.judge_across(main_rows() + switch_rows(0.008))
    switch, switch_fast = rows[3], rows[4]
    assert switch["speedup"] == pytest.approx(1.0 * 0.011 / 0.008)
    assert switch_fast["speedup"] == pytest.approx(2.0 * 0.011 / 0.008)  # 2.75x
    assert switch_fast["difference"] == pytest.approx(4e-4 / 2)  # not 0, its own default's
    assert switch["across_processes"] is True and "across_processes" not in rows[1]
    assert [r.get("best") for r in rows] == [None, None, None, None, True]
    assert not any("logits" in r for r in rows)
    assert bench.verdicts(rows) == [
        "TensorFlow/Keras train, batch 8: won: switch + fast, 2.75x (separate process, not "
        "interleaved) the fp32 default (logits within 2.0e-04 of its scale, tolerance 0.001); "
        "beyond the tolerance, not crowned: lossy (1.0e-02, 5.50x)"]
    cells = [r[bench.TUNED_HEADER.index("x default")] for r in bench.tuned_rows(rows)]
    assert cells == ["1.00", "2.20", "5.50", "1.38 (separate process, not interleaved)",
                     "2.75 (separate process, not interleaved)"]
    # A slower process: 2.0 x 0.011 / 0.022 = 1.0x, and the main process's fast keeps the crown.
    rows = bench.judge_across(main_rows() + switch_rows(0.022))
    assert [r.get("best") for r in rows] == [None, True, None, None, None]
    assert rows[4]["speedup"] == pytest.approx(1.0)


def test_tuned_driver_starts_a_worker_per_process_option_with_its_environment(monkeypatch,
                                                                              tmp_path):
    """The main worker names TensorFlow's process options (the driver imports no framework);
    the driver starts one more worker per option, with its environment and --process-option,
    and judges its rows across processes."""
    started = []

    def fake_run(command, env, **kwargs):
        started.append((command, env))
        option = bench.parser().parse_args(command[3:]).process_option
        said = {"version": "2.17", "libraries": {"oneDNN": "off" if option else "on"}}
        rows = ([r | said for r in switch_rows(0.008)] if option else
                [r | said | {"process_options": {"switch": {"SWITCH": "0"}}} for r in main_rows()])
        out = "".join(bench.MARK + json.dumps(r) + "\n" for r in rows)
        return subprocess.CompletedProcess(command, 0, stdout=out, stderr="")

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    monkeypatch.delenv("SWITCH", raising=False)
    args = bench.parser().parse_args(["--tuned", "--frameworks", "tf", "--phase", "train",
                                      "--batch-size", "8", "--out", str(tmp_path)])
    rows, _ = bench.run(["tf"], args, log=lambda line: None)
    assert len(started) == 2
    (main, main_env), (extra, extra_env) = started
    assert "--process-option" not in main and "SWITCH" not in main_env
    assert extra[extra.index("--process-option") + 1] == "switch" and extra_env["SWITCH"] == "0"
    assert extra[:-2] == main and bench.parser().parse_args(extra[3:]).tuned
    assert [r["config"] for r in rows][3:] == ["switch", "switch + fast"]
    assert rows[4]["best"] and rows[4]["across_processes"] and rows[4]["options"] == [
        "switch", "fast"]
    assert not any("logits" in r for r in rows)
    # What ran: the main process's libraries, then the option's process's.
    assert bench.what_ran(["tf"], rows)[:2] == [
        "TensorFlow/Keras 2.17: oneDNN on",
        "TensorFlow/Keras 2.17, process option switch: oneDNN off"]


def test_tensorflows_onednn_off_worker_runs_with_onednn_off():
    """The real thing: a TensorFlow worker started as the driver starts "oneDNN off"'s, whose
    rows say that TensorFlow runs without oneDNN; without the environment it refuses."""
    import os
    command = [sys.executable, "-m", "common.commands.bench", "--worker", "tf", "--tuned",
               "--process-option", "oneDNN off", "--arch", "cifar_resnet20", "--input-size",
               "8", "--batch-size", "2", "--rounds", "1", "--steps", "1", "--warmup", "0",
               "--phase", "infer", "--threads", "1"]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    done = subprocess.run(command, env=env | REFERENCES["tf"].PROCESS_OPTIONS["oneDNN off"],
                          capture_output=True, text=True, timeout=300)
    rows = [json.loads(line[len(bench.MARK):]) for line in done.stdout.splitlines()
            if line.startswith(bench.MARK)]
    assert done.returncode == 0 and len(rows) == 4, done.stdout + done.stderr
    assert rows[0]["config"] == "oneDNN off" and rows[1]["options"][0] == "oneDNN off"
    for r in rows:
        assert r["libraries"]["oneDNN"].startswith("off (") and "process_options" not in r, r
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert "without {'TF_ENABLE_ONEDNN_OPTS': '0'}" in done.stdout, done.stdout + done.stderr
