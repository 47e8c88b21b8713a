"""The side-by-side summary command: agreement is reported, and disagreement is caught."""
from common.commands import summary
from common.core.oracle import ParamCounts
from common.frameworks import FRAMEWORKS
from tests.helpers import MODULES


def test_summary_reports_agreement_for_all_frameworks(capsys):
    assert summary.main(["--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "all agree: yes" in out
    assert out.count("11,178,378") == 1 + len(FRAMEWORKS)  # oracle + each framework, totals row
    assert "1x512x2x2" in out  # stage4 at 64x64


def test_summary_catches_a_framework_that_disagrees(capsys, monkeypatch):
    real = MODULES["mx"].part_param_counts

    def off_by_one(model):
        counts = real(model)
        counts["stage3"] = counts["stage3"] + ParamCounts(1, 0)
        return counts

    monkeypatch.setattr(MODULES["mx"], "part_param_counts", off_by_one)
    assert summary.main(["--input-size", "32", "--frameworks", "torch,mx"]) == 1
    assert "all agree: NO" in capsys.readouterr().out


def test_summary_rejects_unknown_framework(capsys):
    import pytest
    with pytest.raises(SystemExit):
        summary.main(["--frameworks", "torch,keras"])
    assert "expected names from torch,tf,mx,jax, got 'torch,keras'" in capsys.readouterr().err
