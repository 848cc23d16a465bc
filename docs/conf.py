"""Sphinx configuration (build: ``python -m sphinx -W -b html docs docs/_build/html``)."""

import skivcnf

project = "skivcnf"
author = "skivcnf developers"
release = skivcnf.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "numpydoc"]
numpydoc_show_class_members = False
autodoc_member_order = "bysource"
exclude_patterns = ["_build"]
html_theme = "alabaster"
