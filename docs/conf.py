"""Sphinx configuration (build: ``python -m sphinx -W -b html docs docs/_build/html``)."""

import skivcnf

project = "skivcnf"
author = "skivcnf developers"
release = skivcnf.__version__
version = release

# myst_parser: the benchmarks page is Markdown, and includes the suite's generated tables
extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "numpydoc", "myst_parser"]
numpydoc_show_class_members = False
autodoc_member_order = "bysource"
exclude_patterns = ["_build"]
html_theme = "alabaster"


# scikit-learn's inherited ``set_output`` docstring cross-references labels of the
# scikit-learn documentation, which do not exist here and would fail a ``-W`` build.
# Point them at scikit-learn's pages instead (only in that docstring).
_SKLEARN_REFS = {
    ":ref:`user guide <df_output_transform>`":
        "`user guide <https://scikit-learn.org/dev/modules/df_output_transform.html>`__",
    ":ref:`sphx_glr_auto_examples_miscellaneous_plot_set_output.py`":
        "`the set_output example <https://scikit-learn.org/stable/auto_examples/miscellaneous/"
        "plot_set_output.html>`__",
}


def _fix_sklearn_refs(app, what, name, obj, options, lines):
    if not name.endswith(".set_output"):
        return
    for i, line in enumerate(lines):
        for old, new in _SKLEARN_REFS.items():
            line = line.replace(old, new)
        lines[i] = line


def setup(app):
    app.connect("autodoc-process-docstring", _fix_sklearn_refs)
