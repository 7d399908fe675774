"""A real trained model's logits: scikit-learn's MLPClassifier on the digits data set.

Issue 15's real-model case. ``MLPClassifier((100,))`` with scikit-learn's defaults
(ReLU, Adam, 200 iterations; ``random_state=0`` so that every run fits the same
network) is fitted on the digits data set, inputs divided by 16. Its logits are the
network's pre-softmax outputs, computed from the fitted weights as its forward pass
does before the softmax::

    hidden = max(X @ coefs_[0] + intercepts_[0], 0)      # ReLU
    logits = hidden @ coefs_[1] + intercepts_[1]

(MLPClassifier has no ``decision_function``; the script checks that the softmax of
these logits is its ``predict_proba``.) Batches of 32, 128 and 512 rows (the first
rows of the data set, float32) are timed with three candidates, interleaved round by
round with ``python -m smoothce bench``'s method (:func:`smoothce._bench.time_calls`):

- ``smoothce``: ``cross_entropy_with_grad(logits, labels, 0.1, out=buf)``;
- ``naive``: the naive NumPy code (:func:`smoothce._baselines.naive_loss_and_grad`);
- ``smoothce, N(0,1)``: smoothce on standard normals of the same shape
  (:func:`smoothce._bench_logits.draw_logits`), what the other benchmarks time.

Without scikit-learn it says so and exits (status 0). Run from the repository root::

    PYTHONPATH=. python benchmarks/trained_mlp.py [--rounds 15] [--sample-ms 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

import numpy as np

import smoothce
from smoothce._baselines import naive_loss_and_grad
from smoothce._bench import Spread, time_calls, verdict
from smoothce._bench_logits import draw_logits, logit_stats

BATCHES = (32, 128, 512)
EPSILON = 0.1


def mlp_logits() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The fitted network's logits (float64) on all of digits, its labels, and notes."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        net = MLPClassifier((100,), random_state=0).fit(X, y)
    hidden = np.maximum(X @ net.coefs_[0] + net.intercepts_[0], 0.0)
    logits = hidden @ net.coefs_[1] + net.intercepts_[1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    notes = {
        "iterations": int(net.n_iter_),
        "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
        "training_accuracy": float(net.score(X, y)),
        "max_abs_diff_predict_proba": float(np.abs(p - net.predict_proba(X)).max()),
    }
    return logits, y.astype(np.int64), notes


def measure(
    logits: np.ndarray, labels: np.ndarray, rounds: int, seconds: float
) -> dict[int, dict[str, list[float]]]:
    """Seconds per call of the three candidates at each batch size."""
    out: dict[int, dict[str, list[float]]] = {}
    for rows in BATCHES:
        z = np.ascontiguousarray(logits[:rows], dtype=np.float32)
        y = np.ascontiguousarray(labels[:rows])
        zn, yn = draw_logits("normal", z.shape, np.float32)
        buf, buf_n = np.zeros_like(z), np.zeros_like(zn)  # touched: no page faults timed
        out[rows] = time_calls(
            {
                "smoothce": lambda z=z, y=y, b=buf: smoothce.cross_entropy_with_grad(
                    z, y, EPSILON, out=b
                ),
                "naive": lambda z=z, y=y: naive_loss_and_grad(z, y, EPSILON),
                "smoothce, N(0,1)": lambda z=zn, y=yn, b=buf_n: smoothce.cross_entropy_with_grad(
                    z, y, EPSILON, out=b
                ),
            },
            rounds=rounds,
            min_sample_seconds=seconds,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sample-ms", type=float, default=20.0)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    try:
        import sklearn
    except ImportError:
        print("scikit-learn is not installed: nothing to time (pip install scikit-learn)")
        return 0
    logits, labels, notes = mlp_logits()
    stats = logit_stats(logits, labels, max_rows=len(labels))
    print(
        f"MLPClassifier((100,)) of scikit-learn {sklearn.__version__} on digits / 16: "
        f"{notes['iterations']} iterations"
        + ("" if notes["converged"] else " (stopped at max_iter, not converged)")
        + f", training accuracy {notes['training_accuracy']:.3f}; softmax(logits) within "
        f"{notes['max_abs_diff_predict_proba']:.1e} of predict_proba.\n"
        f"Its logits: mean {stats['mean']:.1f}, std {stats['std']:.1f}, max {stats['max']:.1f}; "
        f"the label's logit is its row's largest in {100 * stats['label_is_max']:.0f}% of "
        f"rows, a median {stats['margin']:.1f} above the next.\n"
        f"float32, epsilon {EPSILON}, smoothce from {smoothce.__file__} (out= preallocated, "
        f"default workers); {args.rounds} interleaved rounds, samples >= {args.sample_ms:g} ms.\n"
        "Median us per call (q1-q3)."
    )
    names = ["smoothce", "naive", "smoothce, N(0,1)"]
    verdicts = ["smoothce vs naive", "smoothce, MLP vs N(0,1) logits"]
    print("| rows | " + " | ".join(names + verdicts) + " |")
    print("|---|" + "---|" * (len(names) + 2))
    results: dict[str, Any] = {"notes": notes, "logit_stats": stats, "batches": {}}
    for rows, times in measure(logits, labels, args.rounds, args.sample_ms / 1e3).items():
        spreads = {name: Spread.of(times[name]) for name in names}
        cells = [
            f"{s.median * 1e6:.1f} ({s.q1 * 1e6:.1f}-{s.q3 * 1e6:.1f})" for s in spreads.values()
        ]
        cells += [
            verdict(times["smoothce"], times["naive"]),
            verdict(times["smoothce"], times["smoothce, N(0,1)"]),
        ]
        print(f"| {rows} | " + " | ".join(cells) + " |", flush=True)
        results["batches"][rows] = times
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
