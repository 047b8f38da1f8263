"""Sphinx configuration of jaxnet's book: myst-nb chapters executed at build, offline math.

Build (offline, warnings as errors), from the repository root:

    pip install -e ".[docs]" && python -m sphinx -W --keep-going -b html docs docs/_build/html

The chapters are jupytext Markdown notebooks (``md:myst``), executed by myst-nb as the site is
built, as JAX's and Flax's docs are. MathJax comes from the ``sphinx-mathjax-offline`` package
and is copied into the site: no page loads anything from a network.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The executed chapters import this checkout's jaxnet, whatever else is installed: the kernel
# runs in the chapter's own folder and inherits this environment.
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
)
os.environ["JAXNET_BOOK_BUILD"] = "1"  # each chapter then checks which jaxnet it imported

project = "jaxnet"
author = "jaxnet contributors"
copyright = "2026, jaxnet contributors"
release = "0.1.0"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/mathjax (no CDN)
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "**/*.ipynb", "performance-notes.md"]

# myst: $...$ and $$...$$ math, labelled equations numbered as the report numbers them.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_dmath_double_inline = True
myst_heading_anchors = 3

# Every chapter is executed on each build; its numbers and figures are this build's.
nb_execution_mode = "force"
nb_execution_timeout = 240
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_render_markdown_format = "myst"  # Markdown that a cell displays (tables included)

# autodoc: the API reference from the Google-style docstrings.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# A dataclass's "Attributes:" section as fields of the class, not as a second entry per field
# beside autodoc's own (which Sphinx reports as a duplicate).
napoleon_use_ivar = True

html_theme = "sphinx_book_theme"
html_title = "jaxnet: learn backpropagation"
html_static_path = ["_static"]
html_theme_options = {
    "repository_url": "",
    "use_repository_button": False,
    "use_download_button": True,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
# An explicit colour mode: without one pydata-sphinx-theme logs a console error on every page.
html_context = {"default_mode": "auto"}
# Pages the chapters make as they run (explain --html of a test digit), copied to the site's
# root; the folder is emptied here so that a page from an earlier build never survives.
GENERATED = Path(__file__).resolve().parent / "_generated"
GENERATED.mkdir(exist_ok=True)
for stale in GENERATED.iterdir():
    stale.unlink()
html_extra_path = ["_generated"]
html_favicon = "_static/favicon.svg"  # else the browser asks for /favicon.ico and gets 404
html_last_updated_fmt = None
html_copy_source = True
