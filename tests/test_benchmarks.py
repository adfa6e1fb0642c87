"""The benchmark scripts that report on the guarantee run and print what they promise."""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_fuzzing_script_reports_every_section(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import guarantee_fuzz

    assert guarantee_fuzz.main(["-n", "12", "--seed", "3", "--max-n", "40"]) == 0
    out = capsys.readouterr().out
    assert "## Guarantee fuzzing: 12 instances, seed 3, n <= 40" in out
    for section in ("### By raw outputs", "### Refused instances", "### Failures by kind"):
        assert section in out
    sys.modules.pop("guarantee_fuzz", None)
