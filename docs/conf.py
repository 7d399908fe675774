"""Sphinx configuration for smoothce (built with -W: any warning fails the build)."""

from importlib.metadata import version as _version

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
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
exclude_patterns = ["_build", "examples/README.rst"]

html_theme = "pydata_sphinx_theme"
html_title = f"smoothce {release}"
html_theme_options = {"navigation_with_keys": False}

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
