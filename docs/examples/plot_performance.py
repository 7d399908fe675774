"""
Performance: time against problem size
======================================

**Where these numbers come from.** They were measured once on the project's
development machine, a virtual machine with 2 cores (AMD EPYC, Linux) that other
jobs share, so single timings there swing by up to 2x; float32 logits,
epsilon = 0.1, with::

    python -m smoothce bench --shape 256 10 --shape 2048 100 --shape 8192 1000 \\
        --shape 65536 100 --shape 4096 32000 --json > docs/data/bench.json

This script, run by the documentation build, turns that file into the table and the
plot; it does not time anything itself. Every candidate was timed on the same arrays
in interleaved rounds and the table gives medians. The *exp floor* is one ``np.exp``
over the logits, the least any exact method must do. PyTorch (the CPU build) is
timed when it is installed. Run the same command to see your machine's numbers.
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
machine = {key: value for key, value in data.items() if key != "results"}
print("recorded with the measurements:", ", ".join(f"{k} = {v}" for k, v in machine.items()))

# %%
# The table
# ---------
# Median milliseconds per call, one thread each (smoothce ``workers=1``, PyTorch
# ``torch.set_num_threads(1)``), and in brackets each time as a multiple of the exp
# floor (1x would be as fast as one ``np.exp``). "forward" is the loss alone;
# "forward + gradient" is the loss and its gradient with respect to the logits (for
# PyTorch: forward and ``backward()``).
columns = [
    ("exp floor", "exp floor"),
    ("smoothce forward w1", "smoothce forward"),
    ("smoothce fwd+grad w1", "smoothce forward + gradient"),
    ("naive fwd+grad", "naive NumPy forward + gradient"),
    ("torch forward t1", "PyTorch forward"),
    ("torch fwd+bwd t1", "PyTorch forward + backward"),
]


# sphinx_gallery_start_ignore
class Table:
    """Rows shown as an HTML table by sphinx-gallery (``_repr_html_``), as text elsewhere."""

    def __init__(self, header, rows):
        self.header, self.rows = header, rows

    def _repr_html_(self):
        head = "".join(f"<th>{h}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in self.rows
        )
        return f'<table class="bench"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def __repr__(self):
        lines = [self.header, *self.rows]
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(self.header))]
        rjust = [[str(c).rjust(w) for c, w in zip(line, widths, strict=True)] for line in lines]
        return "\n".join("  ".join(line) for line in rjust)


# sphinx_gallery_end_ignore
rows = []
for r in results:
    n, k = r["shape"]
    floor = r["times"]["exp floor"]
    cells = [f"{n} x {k}", f"{floor * 1e3:.3f}"]
    for key, _ in columns[1:]:
        t = r["times"].get(key)
        cells.append("not measured" if t is None else f"{t * 1e3:.3f} ({t / floor:.1f}x)")
    rows.append(cells)
Table(["N x K", *[label for _, label in columns]], rows)

# %%
# The plot
# --------
# The same medians against the number of logits per call, on log-log axes: solid
# lines are forward + gradient, dashed lines forward only, and the dotted grey line
# is the exp floor, the time of a single ``np.exp`` over the logits.
sizes = np.array([r["shape"][0] * r["shape"][1] for r in results])
order = np.argsort(sizes)
styles = {
    "exp floor": dict(color="grey", linestyle=":"),
    "smoothce forward w1": dict(color="tab:blue", linestyle="--"),
    "smoothce fwd+grad w1": dict(color="tab:blue", linestyle="-"),
    "naive fwd+grad": dict(color="tab:orange", linestyle="-"),
    "torch forward t1": dict(color="tab:green", linestyle="--"),
    "torch fwd+bwd t1": dict(color="tab:green", linestyle="-"),
}
fig, ax = plt.subplots(figsize=(8, 5))
for key, label in columns:
    times = np.array([r["times"].get(key, np.nan) for r in results])
    if np.isfinite(times).any():
        ax.loglog(sizes[order], 1e3 * times[order], marker="o", label=label, **styles[key])
ax.set_xlabel("logits per call, N * K")
ax.set_ylabel("median time per call [ms]")
ax.set_title("Forward and forward + gradient against the exp floor, float32, one thread")
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
