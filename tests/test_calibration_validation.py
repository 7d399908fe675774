"""Calibration arguments are checked like the loss functions' (issue 7, items 6, 10, 13).

Every bad argument raises a ValueError or TypeError that names the argument, the rule
and the value received, in the loss functions' words; nothing reaches NumPy first.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import smoothce
from smoothce.calibration import (
    BinCounts,
    bin_counts,
    expected_calibration_error,
    reliability_curve,
)

Z = np.zeros((2, 3))
Y = np.array([0, 2])
MAX_BINS = 10**6  # the documented bound
CALIBRATION = [expected_calibration_error, reliability_curve, bin_counts]


@pytest.mark.parametrize("fn", CALIBRATION)
@pytest.mark.parametrize("bad", [2.0, 1.5, "a", True, np.bool_(False), [0]])
def test_ignore_index_is_validated_like_the_loss(fn, bad):
    """Item 6: 2.0, "a" and 1.5 were accepted as ignore_index."""
    with pytest.raises(TypeError) as loss_error:
        smoothce.cross_entropy(Z, Y, ignore_index=bad)
    with pytest.raises(TypeError) as calibration_error:
        fn(Z, Y, ignore_index=bad)
    assert str(calibration_error.value) == str(loss_error.value)
    assert "ignore_index must be an integer or None; got ignore_index=" in str(
        calibration_error.value
    )


def _same(a, b):
    """Equal to the bit: floats, arrays, tuples of arrays or BinCounts."""
    if isinstance(a, BinCounts):
        a, b = (a.count, a.confidence, a.correct, a.undefined), (
            b.count, b.confidence, b.correct, b.undefined,
        )  # fmt: skip
    np.testing.assert_equal(a, b)


@pytest.mark.parametrize("fn", CALIBRATION)
def test_integer_ignore_index_of_any_integer_type_still_works(fn):
    """Ignoring row 1 (of every integer type) gives the result of row 0 alone."""
    z = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 5.0]])
    y = np.array([0, -100])
    alone = fn(z[:1], y[:1], n_bins=4)
    with_both = fn(z, np.array([0, 2]), n_bins=4)
    for ignore in (-100, np.int8(-100), np.int64(-100)):
        got = fn(z, y, ignore_index=ignore, n_bins=4)
        _same(got, alone)
        with pytest.raises(AssertionError):  # row 1 would change it: it was left out
            _same(got, with_both)


@pytest.mark.parametrize("fn", CALIBRATION)
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"axis": 2}, ValueError, r"axis must be in \[-2, 1\] .*got axis=2"),
        ({"axis": 1.0}, TypeError, r"axis must be an integer; got axis=1\.0"),
        ({"axis": True}, TypeError, r"axis must be an integer; got axis=True"),
        ({"n_bins": 0}, ValueError, r"n_bins must be in \[1, 1000000\]; got n_bins=0"),
        ({"n_bins": 2.5}, TypeError, r"n_bins must be an integer; got n_bins=2\.5"),
        ({"n_bins": True}, TypeError, r"n_bins must be an integer; got n_bins=True"),
        ({"from_logits": "no"}, TypeError, r"from_logits must be True or False; got 'no'"),
        ({"from_logits": None}, TypeError, r"from_logits must be True or False; got None"),
    ],
)
def test_options_are_validated_like_the_loss(fn, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(Z, Y, **kwargs)


@pytest.mark.parametrize("fn", CALIBRATION)
@pytest.mark.parametrize("n_bins", [10**12, MAX_BINS + 1, np.int64(2**40)])
def test_huge_n_bins_is_a_value_error_not_a_memory_error(fn, n_bins):
    """Item 10: n_bins=10**12 tried to allocate 7 TiB and raised MemoryError."""
    with pytest.raises(
        ValueError, match=rf"n_bins must be in \[1, 1000000\]; got n_bins={n_bins}"
    ):
        fn(Z, Y, n_bins=n_bins)


def test_huge_n_bins_is_refused_by_bin_counts_empty_too():
    with pytest.raises(ValueError, match=r"n_bins must be in \[1, 1000000\]; got n_bins=10000000"):
        BinCounts.empty(10**7)


def test_the_largest_n_bins_works():
    _, _, count, edges = reliability_curve(Z, Y, n_bins=MAX_BINS)
    assert count.shape == (MAX_BINS,)
    assert edges.shape == (MAX_BINS + 1,)
    assert count.sum() == 2


@pytest.mark.parametrize("fn", CALIBRATION)
@pytest.mark.parametrize(
    ("scores", "labels", "axis"),
    [
        (np.zeros((2, 0)), [0, 1], -1),
        (np.zeros((0, 0)), np.zeros(0, int), -1),
        (np.zeros((2, 0, 3)), np.zeros((2, 3), int), 1),
    ],
)
def test_zero_classes_names_scores_and_the_class_axis(fn, scores, labels, axis):
    """Item 13: K=0 raised NumPy's "cannot reshape array of size 0 into shape (0)"."""
    ax = axis % scores.ndim
    with pytest.raises(
        ValueError,
        match=rf"scores must have at least one class along axis {ax}; "
        rf"got shape {scores.shape}".replace("(", r"\(").replace(")", r"\)"),
    ):
        fn(scores, labels, axis=axis)


@pytest.mark.parametrize("fn", CALIBRATION)
@pytest.mark.parametrize(
    ("scores", "where", "value"),
    [
        (np.array([[0.5, 0.5], [0.25, 1.5]]), r"\[1, 1\]", r"1\.5"),
        (np.array([[0.5, 0.5], [-0.25, 1.25]]), r"\[1, 0\]", r"-0\.25"),
        (np.array([[np.nan, 0.5], [0.5, 0.5]]), r"\[0, 0\]", "nan"),
        (np.array([[0.5, 0.5], [0.5, np.inf]]), r"\[1, 1\]", "inf"),
        (np.array([[0.5, 0.5], [0.5, 3.0]], np.float16), r"\[1, 1\]", r"3\.0"),
        (np.array([[0, 1], [2, 0]]), r"\[1, 0\]", "2"),
    ],
)
def test_probability_error_names_the_argument_position_and_value(fn, scores, where, value):
    """Item 13: "probabilities must lie in [0, 1]" named neither the argument nor the value."""
    with pytest.raises(ValueError, match="scores must be probabilities") as err:
        fn(scores, [0, 1], from_logits=False)
    message = str(err.value)
    assert message.startswith("scores must be probabilities in [0, 1] when from_logits=False")
    assert re.search(rf"got scores{where} = {value}\b", message), message
    assert "np.float" not in message
    assert "from_logits=True" in message


def test_probability_error_gives_the_position_on_the_callers_axes():
    p = np.full((2, 3, 4), 0.25)  # classes on axis 1
    p[1, 2, 3] = 7.0
    with pytest.raises(ValueError, match=r"got scores\[1, 2, 3\] = 7\.0"):
        expected_calibration_error(p, np.zeros((2, 4), int), axis=1, from_logits=False)


@pytest.mark.parametrize("fn", CALIBRATION)
@pytest.mark.parametrize("scores", [np.ones((2, 2), bool), np.ones((2, 2), complex), ["a", "b"]])
def test_non_real_scores_are_a_type_error(fn, scores):
    with pytest.raises(TypeError, match=r"scores must be a real floating or integer array.*; got"):
        fn(scores, [0, 1])


@pytest.mark.parametrize("fn", CALIBRATION)
def test_empty_label_list_is_zero_class_indices_like_the_loss(fn):
    """``[]`` arrives as float64; with the class-index shape it is unambiguous."""
    fn(np.zeros((0, 3)), [])
    assert expected_calibration_error(np.zeros((0, 3)), []) == 0.0


def test_numpy_bool_from_logits_is_a_bool():
    p = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert expected_calibration_error(p, [0, 1], from_logits=np.bool_(False)) == (
        expected_calibration_error(p, [0, 1], from_logits=False)
    )


@pytest.mark.parametrize("which", ["scores", "labels"])
def test_ragged_calibration_inputs_name_the_argument(which):
    from smoothce.calibration import expected_calibration_error

    args = {"scores": [[0.1, 0.9], [0.5, 0.5]], "labels": [1, 0]}
    args[which] = [[0.1, 0.9], [0.5]] if which == "scores" else [[1], [0, 1]]
    with pytest.raises(ValueError, match=rf"^{which} must be a rectangular array"):
        expected_calibration_error(args["scores"], args["labels"])
