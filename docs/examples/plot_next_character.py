"""
A next-character model with the fused linear head
=================================================

A small character-level language model in pure NumPy, trained with
:func:`smoothce.linear_cross_entropy_with_grad` on a text that ships with Python (the
help topics of :mod:`pydoc`, about 460,000 characters; nothing is downloaded). The
model reads the previous eight characters, embeds them, mixes them through one tanh
layer and predicts the next character with a linear head whose loss and three
gradients come from one call: the (tokens x vocabulary) logits are never built.
At the end we evaluate the whole text at once and compare the peak memory of the
fused head with the unfused one (logits, then :func:`smoothce.cross_entropy`).
Everything on this page is computed when the documentation is built.
"""

# %%
# Data: the characters of the pydoc help topics, an 8-character context for every
# position, the last tenth held out.
import tracemalloc
from pydoc_data.topics import topics

import matplotlib.pyplot as plt
import numpy as np

import smoothce

text = "".join(topics[name] for name in sorted(topics))
chars = sorted(set(text))
V = len(chars)
codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
ids = np.searchsorted(np.array([ord(c) for c in chars]), codes).astype(np.intp)
CONTEXT = 8
windows = np.lib.stride_tricks.sliding_window_view(ids, CONTEXT + 1)
X_all, y_all = windows[:, :CONTEXT], windows[:, CONTEXT]
split = int(0.9 * len(y_all))
X_train, y_train, X_test, y_test = X_all[:split], y_all[:split], X_all[split:], y_all[split:]
print(f"{len(text):,} characters, a vocabulary of {V}; {len(y_train):,} training positions")

# %%
# The model: 24-dimensional character embeddings, concatenated (8 x 24 = 192), one
# layer of 256 tanh units, and the linear head (V x 256 weights and a bias). The head's
# loss, label-smoothed with epsilon = 0.1 and a small z-loss, and its gradients with
# respect to the hidden states, the weights and the bias come from smoothce; the rest
# of backpropagation is a few NumPy lines. Adam updates everything.

rng = np.random.default_rng(0)
EMB, HID = 24, 256
params = {
    "E": rng.normal(scale=0.1, size=(V, EMB)).astype(np.float32),
    "W1": rng.normal(scale=1 / np.sqrt(CONTEXT * EMB), size=(CONTEXT * EMB, HID)).astype(
        np.float32
    ),
    "b1": np.zeros(HID, dtype=np.float32),
    "W": rng.normal(scale=1 / np.sqrt(HID), size=(V, HID)).astype(np.float32),
    "b": np.zeros(V, dtype=np.float32),
}
moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}


def hidden_states(X):
    x = params["E"][X].reshape(len(X), CONTEXT * EMB)
    return x, np.tanh(x @ params["W1"] + params["b1"])


def step(X, y, t, lr=3e-3, beta1=0.9, beta2=0.999):
    x, h = hidden_states(X)
    loss, g = smoothce.linear_cross_entropy_with_grad(
        h, params["W"], y, 0.1, bias=params["b"], z_loss=1e-4
    )
    dpre = g.hidden * (1 - h * h)  # through tanh
    dx = (dpre @ params["W1"].T).reshape(len(X), CONTEXT, EMB)
    dE = np.zeros_like(params["E"])
    np.add.at(dE, X, dx)
    grads = {"E": dE, "W1": x.T @ dpre, "b1": dpre.sum(0), "W": g.classifier, "b": g.bias}
    for k, grad in grads.items():
        m, v = moments[k]
        m *= beta1
        m += (1 - beta1) * grad
        v *= beta2
        v += (1 - beta2) * grad * grad
        update = lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + 1e-8)
        params[k] -= update.astype(np.float32)
    return float(loss)


def held_out_loss():
    _, h = hidden_states(X_test)
    # Plain cross-entropy (no smoothing, no z-loss) in nats per character.
    return float(smoothce.linear_cross_entropy(h, params["W"], y_test, bias=params["b"]))


# %%
# Training: 800 steps of 512 random positions.

BATCH, STEPS = 512, 800
train_curve, test_curve = [], []
print(f"before training: held-out loss {held_out_loss():.3f} nats (log V = {np.log(V):.3f})")
for t in range(1, STEPS + 1):
    idx = rng.integers(0, len(y_train), size=BATCH)
    train_curve.append(step(X_train[idx], y_train[idx], t))
    if t % 100 == 0:
        test_curve.append((t, held_out_loss()))
print(f"after {STEPS} steps: held-out loss {test_curve[-1][1]:.3f} nats per character")

fig, ax = plt.subplots(figsize=(6, 3.5))
steps = np.arange(1, STEPS + 1)
smooth = np.convolve(train_curve, np.ones(50) / 50, mode="valid")
ax.plot(steps[49:], smooth, label="training loss (smoothed, with label smoothing)")
ax.plot(*zip(*test_curve, strict=True), "o-", label="held-out cross-entropy")
ax.set_xlabel("step")
ax.set_ylabel("nats per character")
ax.legend()
fig.tight_layout()

# %%
# What it learned: a few characters sampled from the model, one at a time.

context = list(ids[split : split + CONTEXT])
out = []
for _ in range(240):
    _, h = hidden_states(np.array([context[-CONTEXT:]]))
    logits = h @ params["W"].T + params["b"]
    p = np.exp(logits[0] - logits.max())
    nxt = int(rng.choice(V, p=p / p.sum()))
    context.append(nxt)
    out.append(chars[nxt])
print("".join(chars[i] for i in ids[split : split + CONTEXT]) + "|" + "".join(out))

# %%
# Memory: the loss and gradients of the head over the whole text in one call. The
# unfused head holds the (positions x V) logits and their gradient; the fused one a
# workspace of at most 32 MiB, however many positions.

_, h_all = hidden_states(X_all)


def peak(f):
    """``(result of f(), peak bytes traced while it ran)``."""
    tracemalloc.start()
    try:
        result = f()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def unfused():
    logits = h_all @ params["W"].T + params["b"]
    loss, G = smoothce.cross_entropy_with_grad(logits, y_all, 0.1)
    return loss, G @ params["W"], G.T @ h_all, G.sum(0)


def fused():
    return smoothce.linear_cross_entropy_with_grad(
        h_all, params["W"], y_all, 0.1, bias=params["b"]
    )


outputs = h_all.nbytes + params["W"].nbytes + params["b"].nbytes
(a, _), fused_peak = peak(fused)
(b, *_), unfused_peak = peak(unfused)
logits_mib = len(y_all) * V * 4 / 2**20
print(f"{len(y_all):,} positions x {V} classes: the logits alone are {logits_mib:.0f} MiB")
print(
    f"extra peak memory: fused {(fused_peak - outputs) / 2**20:.0f} MiB, "
    f"unfused {(unfused_peak - outputs) / 2**20:.0f} MiB"
)
print(f"the same loss: {float(a):.6f} (fused) and {float(b):.6f} (unfused)")

# %%
# Evaluating the head from its hidden states
# ------------------------------------------
# :func:`smoothce.metrics.evaluate_linear` gives every metric of the head's logits
# (the perplexity, the accuracy and the calibration of its probabilities) from the
# hidden states, forming the logits one block of rows at a time: the same values as
# :func:`smoothce.metrics.evaluate` on the materialised logits, without them.

from smoothce import metrics

_, h_test = hidden_states(X_test)
m = metrics.evaluate_linear(h_test, params["W"], y_test, bias=params["b"], top_k=5)
materialised = metrics.evaluate(h_test @ params["W"].T + params["b"], y_test, top_k=5)
print(
    f"held out: perplexity {m.perplexity:.3f} per character, accuracy {m.accuracy:.1%}, "
    f"top-5 accuracy {m.top_k_accuracy:.1%}, ECE {m.ece:.4f}"
)
print(f"from the materialised logits: perplexity {materialised.perplexity:.3f}")

# %%
# The head's calibration: per bin of the top class's confidence, how often that class
# is right (the bars) against the mean confidence (the dots); the bins are the
# metrics' own, :class:`~smoothce.calibration.BinCounts`. Where a bar rises above its
# dot, the head is less confident than it could be there.

bins = m.bins
filled = bins.count > 0
centres = (np.arange(m.n_bins) + 0.5) / m.n_bins
accuracy_in_bin = bins.correct[filled] / bins.count[filled]
confidence_in_bin = bins.confidence[filled] / bins.count[filled]
fig, ax = plt.subplots(figsize=(5, 4))
ax.bar(
    centres[filled],
    accuracy_in_bin,
    width=1 / m.n_bins,
    edgecolor="black",
    alpha=0.7,
    label="fraction correct",
)
ax.plot(centres[filled], confidence_in_bin, "o", color="C1", label="mean confidence")
ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
ax.set_xlabel("confidence of the top class (bin)")
ax.set_ylabel("fraction correct")
ax.set_title(f"held-out next characters: ECE {m.ece:.4f}")
ax.legend(loc="upper left")
fig.tight_layout()

# %%
# Memory: the metrics of every position of the text. The materialised path holds the
# (positions x V) logits; ``evaluate_linear`` a workspace of 32 MiB (blocks of rows)
# and a few float64 values per row.

m_all, fused_eval_peak = peak(
    lambda: metrics.evaluate_linear(h_all, params["W"], y_all, bias=params["b"])
)


def materialised_metrics():
    logits = h_all @ params["W"].T
    logits += params["b"]
    return metrics.evaluate(logits, y_all)


m_mat, mat_eval_peak = peak(materialised_metrics)
print(f"{len(y_all):,} positions, the peak memory of their metrics:")
print(f"  from hidden states      {fused_eval_peak / 2**20:4.0f} MiB")
print(
    f"  from the logits         {mat_eval_peak / 2**20:4.0f} MiB ({logits_mib:.0f} MiB of logits)"
)
print(f"perplexity {m_all.perplexity:.4f} and {m_mat.perplexity:.4f}")

# %%
# On Dask, with the classifier chunked along its vocabulary
# ----------------------------------------------------------
# :func:`smoothce.dask.evaluate_linear` takes the hidden states chunked along their
# rows, and a classifier either whole or chunked along its vocabulary, as one too large
# for any single worker would be. Each (row block, vocabulary chunk) task forms only its
# window of the logits and returns per-row sums, label logits and top-class candidates;
# they merge exactly as the engine merges the windows of a long row. Here the threaded
# scheduler, four chunks of classes and blocks of 50,000 rows.

import dask.array as da

import smoothce.dask

h_dask = da.from_array(h_all, chunks=(50_000, HID))
W_dask = da.from_array(params["W"], chunks=(-(-V // 4), HID))
b_dask = da.from_array(params["b"], chunks=(-(-V // 4),))
lazy = smoothce.dask.evaluate_linear(h_dask, W_dask, y_all, bias=b_dask)
m_dask, dask_peak = peak(lambda: lazy.compute(scheduler="threads"))
print(f"on Dask, {W_dask.numblocks[0]} chunks of classes: perplexity {m_dask.perplexity:.4f}")
print(f"  accuracy {m_dask.accuracy:.2%} (in memory: {m_all.accuracy:.2%})")
print(f"  peak memory {dask_peak / 2**20:.0f} MiB beyond the inputs")
