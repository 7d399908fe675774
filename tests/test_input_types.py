"""Array types and argument shapes NumPy would misread (issue 7, items 7, 11, 12, 13)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import smoothce


def _matrix(a):
    with warnings.catch_warnings():  # np.matrix warns on construction, not our doing
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.matrix(a)


# -- item 7: masked arrays --------------------------------------------------------
@pytest.mark.parametrize("which", ["logits", "labels", "weight", "prior"])
def test_masked_arrays_are_refused_not_unmasked(which):
    z = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    args = {"logits": z, "labels": np.array([0, 2]), "weight": None, "prior": None}
    masked = {
        "logits": np.ma.array(z, mask=[[0, 1, 0], [0, 0, 0]]),
        "labels": np.ma.array([0, 2], mask=[0, 1]),
        "weight": np.ma.array([1.0, 2.0, 3.0], mask=[0, 1, 0]),
        "prior": np.ma.array([0.5, 0.25, 0.25], mask=[0, 1, 0]),
    }
    args[which] = masked[which]
    with pytest.raises(TypeError, match=rf"^{which} must not be a masked array \(np\.ma\)"):
        smoothce.cross_entropy(
            args["logits"], args["labels"], 0.1, weight=args["weight"], prior=args["prior"]
        )


def test_masked_arrays_are_refused_by_log_softmax_and_smooth_labels():
    with pytest.raises(TypeError, match="logits must not be a masked array"):
        smoothce.log_softmax(np.ma.array([1.0, 2.0], mask=[0, 1]))
    with pytest.raises(TypeError, match="labels must not be a masked array"):
        smoothce.smooth_labels(np.ma.array([0, 1], mask=[0, 1]), 2)


# -- item 11: byte order ------------------------------------------------------------
@pytest.mark.parametrize("code", ["f2", "f4", "f8"])
def test_big_endian_floats_give_the_native_results(code):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((6, 5)) * 3).astype(code)
    y = rng.integers(0, 5, 6)
    big = z.astype(">" + code)
    t = rng.dirichlet(np.ones(5), 6).astype(">f8")
    for labels in (y, t):
        loss, grad = smoothce.cross_entropy_with_grad(big, labels, 0.1)
        loss0, grad0 = smoothce.cross_entropy_with_grad(z, labels, 0.1)
        assert loss == loss0
        assert type(loss) is type(loss0)
        np.testing.assert_array_equal(grad, grad0)
        assert grad.dtype == grad0.dtype
        assert grad.dtype.isnative
        none = smoothce.cross_entropy(big, labels, 0.1, reduction="none")
        np.testing.assert_array_equal(
            none, smoothce.cross_entropy(z, labels, 0.1, reduction="none")
        )
    np.testing.assert_array_equal(smoothce.log_softmax(big), smoothce.log_softmax(z))


def test_big_endian_priors_and_weights_are_read_as_native():
    z = np.array([[1.0, 2.0, 0.0]])
    u = np.array([0.5, 0.25, 0.25])
    w = np.array([1.0, 2.0, 3.0])
    got = smoothce.cross_entropy(z, [1], 0.2, prior=u.astype(">f8"), weight=w.astype(">f4"))
    assert got == smoothce.cross_entropy(z, [1], 0.2, prior=u, weight=w.astype("f4"))


# -- item 12: array subclasses as out ------------------------------------------------
def test_matrix_out_is_refused_before_anything_is_written():
    out = _matrix(np.full((2, 3), 7.0))
    with pytest.raises(TypeError, match=r"out must be a plain numpy\.ndarray .*numpy\.matrix"):
        smoothce.cross_entropy_with_grad(np.zeros((2, 3)), [0, 1], out=out)
    np.testing.assert_array_equal(out, 7.0)


def test_masked_out_is_refused():
    out = np.ma.zeros((2, 3))
    with pytest.raises(TypeError, match=r"out must be a plain numpy\.ndarray"):
        smoothce.cross_entropy_with_grad(np.zeros((2, 3)), [0, 1], out=out)


def test_memmap_out_is_accepted(tmp_path):
    out = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float64, shape=(2, 3))
    z = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    _, g = smoothce.cross_entropy_with_grad(z, [0, 1], 0.1, out=out)
    assert g is out
    np.testing.assert_array_equal(out, smoothce.cross_entropy_grad(z, [0, 1], 0.1))


# -- item 13: NumPy's messages replaced by ones naming the argument ----------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logits": [[1.0, 2.0], [3.0]]}, r"^logits must be a rectangular array; got a ragged"),
        ({"labels": [[0, 1], [1]]}, r"^labels must be a rectangular array; got a ragged"),
        ({"weight": [1.0, [2.0, 3.0]]}, r"^weight must be a rectangular array"),
        ({"prior": [[0.5, 0.5], [1.0]]}, r"^prior must be a rectangular array"),
        (
            {"reduction": np.array(["sum", "mean"])},
            r"^reduction must be one of .*got reduction=array",
        ),
        ({"reduction": ["sum"]}, r"^reduction must be one of .*got reduction=\['sum'\]"),
    ],
)
def test_numpy_errors_become_messages_naming_the_argument(kwargs, match):
    args = {"logits": [[1.0, 2.0], [0.0, 1.0]], "labels": [0, 1]}
    args.update(kwargs)
    logits, labels = args.pop("logits"), args.pop("labels")
    with pytest.raises(ValueError, match=match):
        smoothce.cross_entropy(logits, labels, 0.1, **args)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"epsilon": np.float64("nan")}, "epsilon=nan"),
        ({"epsilon": np.float32(1.5)}, "epsilon=1.5"),
        ({"axis": np.float64(1.0)}, "axis=1.0"),
        ({"num_classes": np.float64(2.5)}, "num_classes=2.5"),
        ({"ignore_index": np.float64(1.5)}, "ignore_index=1.5"),
    ],
)
def test_messages_show_plain_values(kwargs, shown):
    eps = kwargs.pop("epsilon", 0.1)
    with pytest.raises((TypeError, ValueError)) as info:
        smoothce.cross_entropy([[1.0, 2.0]], [0], eps, **kwargs)
    message = str(info.value)
    assert shown in message
    assert "np.float" not in message
