"""resnet-compare --seeds N: every framework trained from the same N seeds (the same initial
weights and data orders in each), and the test accuracy reported as mean ± sd with min and max.
The seeds' runs are stand-ins here (no child process); test_commands.py runs compare for real."""
import argparse
import json
import statistics

import pytest

from common.commands import compare
from common.core.oracle import param_counts
from common.core.spec import get_spec

ARCH = "cifar_resnet20"


def fake_run(framework: str, args, out) -> dict:
    """run_framework's result without a process: a test accuracy set by framework and seed."""
    acc = {"torch": 0.5, "mx": 0.6}[framework] + 0.01 * args.seed ** 2
    counts = param_counts(get_spec(ARCH))
    run = {"framework": framework, "arch": ARCH, "dataset": "digits", "in_channels": 3,
           "num_classes": 10, "input_size": 8, "peak_rss_mib": 100.0,
           "params": {"trainable": counts.trainable, "non_trainable": counts.non_trainable,
                      "total": counts.total},
           "config": {"seed": args.seed, "out": str(out / framework)},
           "history": [{"epoch": 1, "train_loss": 2.0, "train_acc": 0.3, "test_acc": acc,
                        "examples_per_sec": 10.0, "seconds": 1.0}]}
    (out / framework).mkdir(parents=True)
    (out / framework / "run.json").write_text(json.dumps(run))
    return run


def test_seed_statistics_are_the_mean_sample_sd_min_and_max():
    s = compare.seed_statistics([0.9, 0.92, 0.97])
    assert s["mean"] == pytest.approx(statistics.mean([0.9, 0.92, 0.97]))
    assert s["sd"] == pytest.approx(statistics.stdev([0.9, 0.92, 0.97]))  # n - 1
    assert (s["n"], s["min"], s["max"]) == (3, 0.9, 0.97)
    assert compare.seed_statistics([0.5])["sd"] == 0.0


def test_compare_seeds_trains_each_seed_in_every_framework_and_reports_the_spread(
        tmp_path, monkeypatch, capsys):
    calls = []

    def recorded(framework, args, out):
        calls.append((args.seed, framework, out.name))
        return fake_run(framework, args, out)
    monkeypatch.setattr(compare, "run_framework", recorded)
    assert compare.main(["--arch", ARCH, "--frameworks", "torch,mx", "--seeds", "3", "--seed",
                         "1", "--bench-rounds", "0", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    # Each seed in every framework, in its own folder.
    assert calls == [(s, fw, f"seed{s}") for s in (1, 2, 3) for fw in ("torch", "mx")]
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Test accuracy across seeds")[1].split("##")[0]
    assert "Seeds 1, 2, 3:" in section
    accs = [0.5 + 0.01 * s * s for s in (1, 2, 3)]  # PyTorch's: 0.51, 0.54, 0.59
    row = (f"| PyTorch | 3 of 3 | {statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f} "
           f"| 0.5100 | 0.5900 |")
    assert row in section, section
    assert "| MXNet Gluon | 3 of 3 | 0.6467 ± 0.0404 | 0.6100 | 0.6900 |" in section, section
    # The band across seeds, drawn and linked.
    assert "![test accuracy across seeds](seeds.png)" in section
    assert (tmp_path / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The rest of the report is the first seed's runs.
    results = report.split("## Results")[1].split("##")[0]
    assert "| 0.510 |" in results and "| 0.610 |" in results


def test_one_seed_keeps_the_single_run_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "run_framework", lambda fw, args, out: fake_run(fw, args, out))
    args = argparse.Namespace(seeds=1, seed=0)
    by_seed = compare.train_seeds(args, ("torch",), tmp_path)
    assert list(by_seed) == [0] and (tmp_path / "torch" / "run.json").is_file()
    assert compare.seeds_section(by_seed) == ""


def history_run(accs: list[float], seconds: float = 2.0) -> dict:
    """A run of len(accs) epochs, `seconds` of steps each, 0.5 s for its first step."""
    return {"first_step_seconds": 0.5,
            "history": [{"epoch": i, "test_acc": a, "seconds": seconds}
                        for i, a in enumerate(accs, start=1)]}


def test_time_to_target_is_the_first_epoch_that_reaches_it_with_its_steps_seconds():
    assert compare.time_to_target(history_run([0.5, 0.97, 0.96, 0.99]), 0.97) == (2, 4.5)
    assert compare.time_to_target(history_run([0.5, 0.96]), 0.97) is None
    by_seed = {0: {"torch": history_run([0.9, 0.98]), "mx": history_run([0.8, 0.9])},
               1: {"torch": history_run([0.97, 0.97], seconds=4.0), "mx": {"error": "failed"}}}
    section = compare.seeds_section(by_seed, 0.97)
    assert "| framework | seeds | test acc mean ± sd | min | max | reached 0.97 | epochs to it " \
           "(mean) | train s to it (mean) |" in section
    # PyTorch: epoch 2 at 4.5 s, epoch 1 at 4.5 s; MXNet's one run never reached it.
    assert "| PyTorch | 2 of 2 | 0.9750 ± 0.0071 | 0.9700 | 0.9800 | 2 of 2 | 1.5 | 4.5 |" in section
    assert "| MXNet Gluon | 1 of 2 | 0.9000 ± 0.0000 | 0.9000 | 0.9000 | 0 of 1 | n/a (not " \
           "reached) | n/a (not reached) |" in section
    # One seed with a target still reports it; without one, nothing.
    assert "reached 0.97" in compare.seeds_section({0: by_seed[0]}, 0.97)


def test_the_seed_band_is_the_mean_min_and_max_per_epoch():
    from common.commands.plots import seed_band
    runs = [history_run([0.5, 0.9])["history"], history_run([0.7, 0.8])["history"],
            history_run([0.6, 0.7, 0.99])["history"]]  # a third epoch in one run only: left out
    epochs, mean, lo, hi = seed_band(runs)
    assert epochs == [1, 2] and lo == [0.5, 0.7] and hi == [0.7, 0.9]
    assert mean == pytest.approx([0.6, 0.8])
