"""The documentation builds with warnings as errors and documents every public name.

The build (``sphinx-build -W --keep-going -b html docs <tmp>``) renders the API reference from
the docstrings, the user guide, the migration pages and the examples gallery (not executed).
"""

import importlib
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

# The docs extra, and skfair.dask's dask (its page is built from the imported module).
BUILD_NEEDS = ("sphinx", "numpydoc", "sphinx_gallery", "furo", "dask.array")
if os.environ.get("CI"):
    for name in BUILD_NEEDS:  # CI installs the dev extra: without them this module fails
        importlib.import_module(name)
else:
    for name in BUILD_NEEDS:
        pytest.importorskip(name)

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = ("skfair", "skfair.constraints", "skfair.metrics", "skfair.decisions",
                  "skfair.plotting", "skfair.datasets", "skfair.dask", "skfair.layer")


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    """The built site's directory; the build's output is shown if it fails."""
    out = tmp_path_factory.mktemp("html")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(ROOT / "docs"), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


def _anchors(html):
    return {anchor for page in html.rglob("*.html")
            for anchor in re.findall(r'id="([^"]+)"', page.read_text(encoding="utf-8"))}


def test_every_public_name_has_an_anchor(html):
    # A name re-exported by another public module (skfair.DemographicParity is
    # skfair.constraints.DemographicParity) is documented once, under either path.
    modules = {name: importlib.import_module(name) for name in PUBLIC_MODULES}
    paths = [(f"{module}.{name}", getattr(modules[module], name))
             for module in PUBLIC_MODULES for name in modules[module].__all__]
    anchors = _anchors(html)
    missing = [path for path, obj in paths
               if not any(other in anchors for other, same in paths if same is obj)]
    assert not missing, f"public names without an entry in the API reference: {missing}"


def test_docstrings_render_parameters_and_examples(html):
    page = (html / "api" / "skfair.html").read_text(encoding="utf-8")
    text = unescape(re.sub(r"<[^>]+>", "", page))  # the page as read, without its markup
    assert "Parameters" in text and "protected_attributes" in text
    assert "Examples" in text and ">>> clf = FairNeuralClassifier(protected_attributes" in text


def test_every_example_has_a_gallery_page_with_its_title(html):
    for script in sorted((ROOT / "examples").glob("*.py")):
        page = (html / "auto_examples" / f"{script.stem}.html").read_text(encoding="utf-8")
        title = re.search(r"<h1>(.*?)<a", page, re.S)
        assert title and title.group(1).strip(), f"{script.name} has no title in the gallery"


@pytest.mark.parametrize("page, mapped", [
    # a name of the other package beside the skfair name it maps to, on the same page
    ("from_fairness_training.html", ["weighted_avg_fairness_gap", "mean_batch_gap",
                                     "train_fairness_gap", "train_fair_gap", "b_tau"]),
    ("from_fairlearn.html", ["sensitive_features", "protected_attributes",
                             "ThresholdOptimizer", "guarantee=\"labels\""]),
    ("user_guide.html", ["partial_predict_proba", "Guarantees"]),
])
def test_migration_pages_map_the_names(html, page, mapped):
    text = unescape(re.sub(r"<[^>]+>", "", (html / page).read_text(encoding="utf-8")))
    missing = [name for name in mapped if name not in text]
    assert not missing, f"{page} does not mention {missing}"
