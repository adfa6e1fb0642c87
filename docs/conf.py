"""Sphinx configuration: the API reference (numpydoc), the user guide and the examples gallery."""

import os
import sys

# Document the skfair next to these docs (a checkout), not another installed copy.
sys.path.insert(0, os.path.abspath(".."))

import skfair  # noqa: E402

project = "skfair"
copyright = "skfair developers"
release = version = skfair.__version__

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"skfair {release}"

autodoc_member_order = "bysource"
# numpydoc would add a summary table per class whose entries need stub pages of their own;
# the methods are documented in full under each class instead.
numpydoc_show_class_members = False

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    # Running the examples trains networks: the gallery shows their code, not their output
    # (tests/test_examples.py runs them).
    "plot_gallery": "False",
    "download_all_examples": False,
    "write_computation_times": False,
}


def _example_title(app, docname, source):
    """Make the first line of an example's docstring its page title.

    The examples open with a one-line summary, as Python docstrings do; the gallery page
    needs it as a reST section title.
    """
    if not docname.startswith("auto_examples/") or docname == "auto_examples/index":
        return
    lines = source[0].split("\n")
    label = next(i for i, line in enumerate(lines) if line.startswith(".. _sphx_glr_"))
    first = next(i for i in range(label + 1, len(lines)) if lines[i].strip())
    title = lines[first].strip().rstrip(".")
    lines[first:first + 1] = [title, "=" * len(title)]
    source[0] = "\n".join(lines)


def setup(app):
    app.connect("source-read", _example_title)
