"""Every bad-input path raises a ValueError or TypeError naming the argument, the rule
and the value received."""

from __future__ import annotations

import re

import numpy as np
import pytest

import smoothce

Z = np.zeros((2, 3))
Y = np.array([0, 2])


def _raises(exc, match, *args, fn=smoothce.cross_entropy, **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


@pytest.mark.parametrize(
    "fn", [smoothce.cross_entropy, smoothce.cross_entropy_grad, smoothce.cross_entropy_with_grad]
)
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"epsilon": 1.5}, ValueError, r"epsilon must be in \[0, 1\]; got epsilon=1\.5"),
        ({"epsilon": -0.1}, ValueError, r"epsilon must be in \[0, 1\]; got epsilon=-0\.1"),
        ({"epsilon": float("nan")}, ValueError, r"epsilon must be in \[0, 1\]; got epsilon=nan"),
        ({"epsilon": "0.1"}, TypeError, r"epsilon must be a real number .*got epsilon='0\.1'"),
        ({"epsilon": np.array([0.1])}, TypeError, r"epsilon must be a real number"),
        ({"reduction": "avg"}, ValueError, r"reduction must be one of .*got reduction='avg'"),
        ({"prior": "zipf"}, ValueError, r"prior must be None, one of .*got prior='zipf'"),
        ({"axis": 2}, ValueError, r"axis must be in \[-2, 1\] .*got axis=2"),
        ({"axis": 1.0}, TypeError, r"axis must be an integer; got axis=1\.0"),
        ({"num_classes": 4}, ValueError, r"num_classes must equal .*\(3\); got num_classes=4"),
        ({"weight": [1.0, 2.0]}, ValueError, r"weight must have shape \(3,\).*got shape \(2,\)"),
        (
            {"weight": [1.0, -2.0, 1.0]},
            ValueError,
            r"weight must be non-negative and finite; got weight\[1\] = ",
        ),
        ({"weight": [1.0, np.nan, 1.0]}, ValueError, r"weight must be .*got weight\[1\] = "),
        ({"prior": [0.5, 0.5, 0.5]}, ValueError, r"prior must sum to 1 .*got a sum of 1\.5"),
        (
            {"prior": [1.5, -0.5, 0.0]},
            ValueError,
            r"prior must be non-negative and finite; got prior\[1\] = ",
        ),
        (
            {"prior": np.ones((2, 2)) / 2},
            ValueError,
            r"prior must have shape \(3,\) or be broadcastable to \(2, 3\); got shape \(2, 2\)",
        ),
        (
            {"prior": np.array([[1, 0, 0], [0.5, 0.25, 0.2]])},
            ValueError,
            r"prior must sum to 1 .*got a sum of 0\.95 at batch position \[1\]",
        ),
        (
            {"ignore_index": 1.5},
            TypeError,
            r"ignore_index must be an integer or None; got ignore_index=1\.5",
        ),
    ],
)
def test_bad_options(fn, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fn(Z, Y, **kwargs)


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        ([0, 3], {}, r"labels must be class indices in \[0, 3\); got labels\[1\] = 3"),
        ([-1, 0], {}, r"labels must be class indices in \[0, 3\); got labels\[0\] = -1"),
        (
            [-100, 5],
            {"ignore_index": -100},
            r"in \[0, 3\) or ignore_index=-100; got labels\[1\] = 5",
        ),
        (
            [0, 1, 2],
            {},
            r"labels \(integer class indices\) must have the shape .*\(2,\); got shape \(3,\)",
        ),
        ([0.0, 1.0], {}, r"floating dtype are probability targets .*\(2, 3\); got shape \(2,\)"),
        (
            np.full((2, 3), 1 / 3),
            {"ignore_index": 0},
            r"ignore_index applies to integer class labels only",
        ),
        (
            np.array([[0.5, 0.5, 0], [1.0, -0.1, 0.1]]),
            {},
            r"labels must be non-negative and finite \(probabilities\); got labels\[1, 1\] = ",
        ),
        (np.array([[0.5, 0.5, 0], [np.inf, 0, 0]]), {}, r"labels must be .*got labels\[1, 0\] = "),
        (
            np.full((2, 3), 1 / 3),
            {"prior": "others"},
            r"prior='others' .*needs integer class labels",
        ),
        (
            np.array([True, False]),
            {},
            r"labels must be integer class indices or floating probabilities; got dtype bool",
        ),
    ],
)
def test_bad_labels(labels, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        smoothce.cross_entropy(Z, labels, **kwargs)


def test_label_error_reports_the_first_position_in_the_callers_shape():
    y = np.zeros((2, 4), dtype=int)
    y[1, 2] = 9
    msg = r"got labels\[1, 2\] = 9"
    _raises(ValueError, msg, np.zeros((2, 3, 4)), y, axis=1)


@pytest.mark.parametrize(
    ("logits", "exc", "match"),
    [
        (
            np.zeros((2, 3), dtype=complex),
            TypeError,
            r"logits must be a real floating or integer array .*got dtype complex128",
        ),
        (
            np.array([["a", "b", "c"]] * 2),
            TypeError,
            r"logits must be a real floating or integer array; got dtype <U1",
        ),
        (np.zeros((2, 3), dtype=bool), TypeError, r"got dtype bool"),
        (np.float64(1.0), ValueError, r"logits must have at least one dimension"),
        (np.zeros((2, 0)), ValueError, r"at least one class along axis 1; got shape \(2, 0\)"),
    ],
)
def test_bad_logits(logits, exc, match):
    _raises(exc, match, logits, [0, 0])


def test_others_prior_needs_two_classes():
    _raises(
        ValueError,
        r"prior='others' needs at least 2 classes; got 1",
        np.zeros((2, 1)),
        [0, 0],
        prior="others",
    )


@pytest.mark.parametrize(
    ("out", "exc", "match"),
    [
        ([[0.0] * 3] * 2, TypeError, r"out must be a NumPy array or None; got list"),
        (
            np.zeros((3, 2)),
            ValueError,
            r"shape and dtype of the gradient, \(2, 3\) float64; got \(3, 2\) float64",
        ),
        (np.zeros((2, 3), np.float32), ValueError, r"got \(2, 3\) float32"),
    ],
)
def test_bad_out(out, exc, match):
    _raises(exc, match, Z, Y, out=out, fn=smoothce.cross_entropy_with_grad)


def test_out_must_be_writable():
    out = np.zeros((2, 3))
    out.setflags(write=False)
    _raises(ValueError, "out must be writable", Z, Y, out=out, fn=smoothce.cross_entropy_with_grad)


def test_out_must_not_partly_overlap_logits_or_overlap_targets():
    buf = np.zeros((3, 3))
    _raises(
        ValueError,
        "must not partly overlap",
        buf[:2],
        Y,
        out=buf[1:],
        fn=smoothce.cross_entropy_with_grad,
    )
    t = np.full((2, 3), 1 / 3)
    _raises(
        ValueError,
        "must not share memory with labels or prior",
        Z,
        t,
        out=t,
        fn=smoothce.cross_entropy_with_grad,
    )
    u = np.full((2, 3), 1 / 3)
    _raises(
        ValueError,
        "must not share memory",
        Z,
        Y,
        0.1,
        prior=u,
        out=u,
        fn=smoothce.cross_entropy_with_grad,
    )


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: smoothce.smooth_labels([0, 3], 3), ValueError, r"got labels\[1\] = 3"),
        (
            lambda: smoothce.smooth_labels([0], 0),
            ValueError,
            r"num_classes must be at least 1; got num_classes=0",
        ),
        (
            lambda: smoothce.smooth_labels([0], 2.0),
            TypeError,
            r"num_classes must be an integer; got num_classes=2\.0",
        ),
        (
            lambda: smoothce.smooth_labels([0], 3, dtype=int),
            TypeError,
            r"dtype must be a floating dtype; got dtype=int64",
        ),
        (
            lambda: smoothce.smooth_labels(np.ones((2, 4)) / 4, 3),
            ValueError,
            r"need num_classes=3 entries on their last axis; got shape \(2, 4\)",
        ),
        (
            lambda: smoothce.smooth_labels([0], 3, 2.0),
            ValueError,
            r"epsilon must be in \[0, 1\]; got epsilon=2\.0",
        ),
        (
            lambda: smoothce.log_softmax(np.zeros(3), axis=1),
            ValueError,
            r"axis must be in \[-1, 0\]",
        ),
        (
            lambda: smoothce.soft_target_cross_entropy([[1.0, 2.0]], [0], 3, 0.1),
            ValueError,
            r"num_classes must equal .*\(2\); got num_classes=3",
        ),
        (
            lambda: smoothce.soft_target_cross_entropy([[1.0, 2.0]], [0], 2, 0.1, 2.5),
            TypeError,
            r"round_decimals must be an integer",
        ),
    ],
)
def test_bad_arguments_to_the_other_functions(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_messages_end_with_the_value_received():
    with pytest.raises(ValueError, match="epsilon") as info:
        smoothce.cross_entropy(Z, Y, 3)
    assert re.search(r"got epsilon=3\.0\.$", str(info.value))


HINT = (
    "labels must be class indices in [0, 3); got labels[1] = -100. -100 is PyTorch's "
    "default ignore_index; smoothce ignores no label by default: pass ignore_index=-100 "
    "to leave these elements out."
)


@pytest.mark.parametrize(
    "call",
    [
        lambda y: smoothce.cross_entropy(Z, y),
        lambda y: smoothce.cross_entropy_with_grad(Z.astype(np.float32), y, 0.1),
        lambda y: smoothce.metrics.evaluate(Z, y),
        lambda y: smoothce.calibration.expected_calibration_error(Z, y),
        lambda y: smoothce.linear_cross_entropy(np.ones((2, 4)), np.ones((3, 4)), y),
    ],
)
def test_a_label_of_minus_100_without_ignore_index_names_pytorchs_default(call):
    """Issue 16, item 7: a PyTorch user's padding got "got labels[5] = -100." with no
    hint that ignore_index=-100 is what they meant."""
    with pytest.raises(ValueError, match=f"^{re.escape(HINT)}$"):
        call(np.array([0, -100]))


def test_the_minus_100_hint_only_where_it_is_the_answer():
    plain = "labels must be class indices in [0, 3); got labels[1] = -99."
    _raises(ValueError, f"^{re.escape(plain)}$", Z, [0, -99])
    with_ignore = "in [0, 3) or ignore_index=-1; got labels[1] = -100."
    _raises(ValueError, f"{re.escape(with_ignore)}$", Z, [0, -100], ignore_index=-1)
    # smooth_labels takes no ignore_index: the hint would point at nothing.
    _raises(ValueError, r"got labels\[0\] = -100\.$", [-100], 3, fn=smoothce.smooth_labels)
