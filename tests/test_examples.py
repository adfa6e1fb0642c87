"""Every example and the README quickstart run end to end (slow: run in CI or with --runslow)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# What each script must print for its claim to hold.
EXPECTED = {
    "demo.py": r"The fair model's test DP gap is [0-9.]+ <= epsilon = 0.05: yes",
    "grid_search_compas.py": r"chosen: \{'fairneuralclassifier__epsilon': 0.0[1-5]\}",
    "regression_law_school.py": r"mean prediction parity \(eps=0.1\)\s+R2=[0-9.]+ mean prediction "
                                r"gap=0\.(0\d\d|100)",
    "streaming_adult.py": r"a batch of 500 rows: DP gap 0\.0[0-4]\d\d|a batch of 500 rows: DP "
                          r"gap 0\.0500",
    "custom_constraint.py": r"young not below old \(eps=0.02\)\s+accuracy=[0-9.]+ "
                            r"mean\(old\) - mean\(young\)=(-|\+0\.0[0-1]|\+0\.020)",
    "torch_layer.py": r"through the layer 0\.0[0-4]\d|through the layer 0\.050",
}


def run(args, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_shows_its_claim(script, tmp_path):
    out = run([str(script)], tmp_path)
    assert re.search(EXPECTED[script.name], out), out


def test_every_example_has_an_expectation():
    assert {p.name for p in EXAMPLES} == set(EXPECTED)


@pytest.mark.slow
def test_readme_quickstart_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"## Quickstart(.*?)\n## ", readme, re.S).group(1)
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    (tmp_path / "quickstart.py").write_text(code)
    out = run(["quickstart.py"], tmp_path)
    assert "gap" in out and (tmp_path / "tradeoff.png").stat().st_size > 0
