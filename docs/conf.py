"""Sphinx configuration for smoothce (built with -W: any warning fails the build)."""

import re
from importlib.metadata import version as _version
from pathlib import Path

project = "smoothce"
author = "the smoothce developers"
copyright = "2026, the smoothce developers"
release = _version("smoothce")
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # Ships MathJax 3 and points mathjax_path at the copy in _static: the built pages
    # render their formulas without a network (docs/check_offline.py checks this).
    "sphinx-mathjax-offline",
    "sphinx.ext.doctest",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

autosummary_generate = True
templates_path = ["_templates"]  # API page titles without "smoothce.": "dask.evaluate"
# Signatures: the numpydoc "Parameters" section states every type with its shape, so
# the signature shows ``ArrayLike`` rather than the ~12-line expansion of
# numpy.typing.ArrayLike (which would also suggest that str and bytes are accepted),
# one parameter per line once it is long.
autodoc_type_aliases = {"npt.ArrayLike": "ArrayLike", "npt.DTypeLike": "DTypeLike"}
python_maximum_signature_line_length = 88
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
exclude_patterns = ["_build", "examples/README.rst"]

html_theme = "pydata_sphinx_theme"
html_title = f"smoothce {release}"
html_theme_options = {
    "navigation_with_keys": False,
    # The API pages (generated/*) document one object each and the semantics table
    # needs the width: no "On this page" column there (pages not listed get none).
    "secondary_sidebar_items": {
        "*": ["page-toc", "sourcelink"],
        "generated_examples/*": ["page-toc", "sourcelink"],
        "semantics": [],
        "generated_examples/plot_performance": [],
    },
}
# Pages without sub-pages have nothing to show in the "Section Navigation" column: they
# get the full width instead (the semantics table needs it), and so do the executed
# examples, whose printed tables and figures need it too. Found by reading the pages, so
# that a new page cannot be forgotten here.
_here = Path(__file__).parent
html_sidebars = {
    page.stem: []
    for page in sorted(_here.glob("*.rst"))
    if ".. toctree::" not in (text := page.read_text(encoding="utf-8")) and ":toctree:" not in text
}
html_sidebars["generated_examples/*"] = []
html_static_path = ["_static"]
html_css_files = ["smoothce.css"]

# The tutorial and the performance plot are scripts the build executes: the numbers
# and figures in those pages come from running them, never from a copy.
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "generated_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "within_subsection_order": "FileNameSortKey",
    # The execution-times page loads jQuery and DataTables from CDNs; the times are
    # printed in the build log anyway.
    "write_computation_times": False,
}


def _tidy_signature(app, what, name, obj, options, signature, return_annotation):
    """Print an aliased type inside a union (``ArrayLike | None``) by its alias name.

    autodoc renders ``npt.ArrayLike | None`` as ``TypeAliasForwardRef('ArrayLike') | None``.
    """
    alias = re.compile(r"TypeAliasForwardRef\('([\w.]+)'\)")
    if signature:
        signature = alias.sub(r"\1", signature)
    if return_annotation:
        return_annotation = alias.sub(r"\1", return_annotation)
    return signature, return_annotation


def setup(app):
    app.connect("autodoc-process-signature", _tidy_signature)
