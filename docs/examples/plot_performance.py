"""
Performance: time against problem size
======================================

The measurements below were produced on the project's development machine (2 cores,
float32, epsilon = 0.1) by::

    python -m smoothce bench --shape 256 10 --shape 2048 100 --shape 8192 1000 \\
        --shape 65536 100 --shape 4096 32000 --json > docs/data/bench.json

This script, run by the documentation build, turns that file into the table and the
plot. Every candidate was timed on the same arrays in interleaved rounds (medians);
the *exp floor* is one ``np.exp`` over the logits, the least any exact method must do.
Run the same command on your machine to see its numbers.
"""

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

path = Path("../data/bench.json")
if not path.exists():  # run from the repository root rather than docs/examples
    path = Path("docs/data/bench.json")
data = json.loads(path.read_text())
results = data["results"]
print(f"{data['cores']} cores")

# %%
# The table: milliseconds, and each time as a multiple of the exp floor.
columns = [
    ("exp floor", "exp floor"),
    ("smoothce forward w1", "smoothce fwd"),
    ("smoothce fwd+grad w1", "smoothce f+g"),
    ("naive fwd+grad", "naive f+g"),
    ("torch fwd+bwd t1", "torch f+b"),
]
print(f"{'N x K':>14}" + "".join(f"{label:>22}" for _, label in columns))
for r in results:
    n, k = r["shape"]
    floor = r["times"]["exp floor"]
    cells = []
    for key, _ in columns:
        t = r["times"].get(key)
        cells.append("-" if t is None else f"{t * 1e3:.3f} ms ({t / floor:.1f}x)")
    print(f"{f'{n} x {k}':>14}" + "".join(f"{c:>22}" for c in cells))

# %%
# Time against N*K on log-log axes, one thread each.
sizes = np.array([r["shape"][0] * r["shape"][1] for r in results])
order = np.argsort(sizes)
fig, ax = plt.subplots(figsize=(7, 4.5))
for key, label in columns:
    times = np.array([r["times"].get(key, np.nan) for r in results])
    if np.isfinite(times).any():
        ax.loglog(sizes[order], 1e3 * times[order], "o-", label=label)
ax.set_xlabel("logits per call, N * K")
ax.set_ylabel("median time per call [ms]")
ax.set_title("Forward + gradient, float32, one thread")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %%
# The sweep: smoothce's speed-up over N x K
# -----------------------------------------
# ``python -m smoothce bench --sweep --json > docs/data/sweep.json`` times smoothce's
# forward+gradient (one thread, ``out=`` preallocated) against the naive NumPy code and
# PyTorch's forward+backward (one thread) for N in {32, 256, 2048, 16384} and K in
# {10, 100, 1000, 32000}. Each cell is the ratio of the medians (above 1: smoothce is
# faster, "slower" below it); "~" marks a difference within noise (the interquartile
# ranges overlap, drawn white) and an empty cell a shape left out for its memory
# (``--max-memory``). The file records how busy the machine was when it was measured.
sweep_data = json.loads(path.with_name("sweep.json").read_text())
sweep = sweep_data["results"]
print(
    f"load average before the sweep: {sweep_data.get('load_average')}, {sweep_data['cores']} cores"
)
ns = sorted({r["shape"][0] for r in sweep})
ks = sorted({r["shape"][1] for r in sweep})
ours = "smoothce fwd+grad w1"
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
for ax, (theirs, title) in zip(
    axes,
    [("naive fwd+grad", "naive NumPy"), ("torch fwd+bwd t1", "PyTorch, 1 thread")],
    strict=True,
):
    grid = np.full((len(ns), len(ks)), np.nan)
    for r in sweep:
        t, s = r["times"], r["spread"]
        if ours in t and theirs in t:
            i, j = ns.index(r["shape"][0]), ks.index(r["shape"][1])
            ratio = t[theirs] / t[ours]
            overlap = s[ours][0] <= s[theirs][1] and s[theirs][0] <= s[ours][1]
            grid[i, j] = 1.0 if overlap else ratio
            text = (
                "~" if overlap else f"{ratio:.1f}x" if ratio >= 1 else f"{1 / ratio:.1f}x\nslower"
            )
            ax.text(j, i, text, ha="center", va="center", fontsize=10)
    ax.imshow(np.log2(grid), cmap="RdBu", vmin=-3, vmax=3, origin="lower")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(ns)), [str(n) for n in ns])
    ax.set_xlabel("classes K")
    ax.set_title(f"speed-up over {title}")
axes[0].set_ylabel("rows N")
fig.suptitle("smoothce forward+gradient, float32, one thread (blue: smoothce faster)")
fig.tight_layout()
plt.show()
