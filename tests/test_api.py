"""The public API: its names, one version source, and the typing marker."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest

import smoothce

PUBLIC = {
    "LinearGrads",
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "smooth_labels",
    "soft_target_cross_entropy",
}


def test_all_lists_exactly_the_public_api():
    assert set(smoothce.__all__) == PUBLIC | {"__version__", "calibration", "metrics"}
    # smoothce.dask (the optional extra) is an attribute once something imported it.
    public_attrs = {n for n in dir(smoothce) if not n.startswith("_")} - {"dask"}
    assert public_attrs == PUBLIC | {"calibration", "metrics"}
    assert set(smoothce.calibration.__all__) == {
        "BinCounts", "expected_calibration_error", "reliability_curve",
    }  # fmt: skip
    assert set(smoothce.metrics.__all__) == {
        "Accumulator", "Metrics", "accumulate", "accuracy", "evaluate", "nll", "perplexity",
    }  # fmt: skip


ROOT = Path(__file__).resolve().parent.parent


def test_version_comes_from_the_package_metadata():
    assert smoothce.__version__ == importlib.metadata.version("smoothce")


def test_pyproject_changelog_and_package_name_one_version():
    """pyproject.toml said 0.1.0 while CHANGELOG.md described 0.2.0 (issue 16, item 9).
    pyproject.toml is the one source; the installed metadata (hence __version__) is
    read from it, and the changelog's newest entry must name it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(ROOT / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    assert declared == smoothce.__version__, "stale install: pip install -e . again"
    newest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert newest is not None
    assert newest.group(1) == declared


def test_loss_functions_share_one_signature():
    params = {
        name: list(inspect.signature(getattr(smoothce, name)).parameters)
        for name in ("cross_entropy", "cross_entropy_grad", "cross_entropy_with_grad")
    }
    expected = [
        "logits", "labels", "epsilon", "axis", "reduction", "prior", "weight",
        "ignore_index", "num_classes", "workers", "z_loss", "softcap",
    ]  # fmt: skip
    assert params["cross_entropy"] == expected
    assert params["cross_entropy_grad"] == expected
    assert params["cross_entropy_with_grad"] == [*expected, "out"]
    sig = inspect.signature(smoothce.cross_entropy)
    assert sig.parameters["epsilon"].default == 0.0
    assert sig.parameters["reduction"].default == "mean"
    assert sig.parameters["ignore_index"].default is None
    assert sig.parameters["z_loss"].default == 0.0
    assert sig.parameters["softcap"].default is None


def test_docstrings_state_every_parameter():
    for name in PUBLIC:
        fn = getattr(smoothce, name)
        doc = fn.__doc__
        for param in inspect.signature(fn).parameters:
            assert f"{param} :" in doc, (name, param)
        assert "Examples" in doc


def test_package_is_typed():
    assert (Path(smoothce.__file__).parent / "py.typed").exists()


def test_the_core_imports_without_dask():
    import subprocess
    import sys

    code = "import smoothce, smoothce.metrics, sys; assert 'dask' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
