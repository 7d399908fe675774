"""
Performance: time against problem size, on four kinds of logits
================================================================

**Where these numbers come from.** They were measured once on the project's
development machine, a virtual machine with 2 cores (AMD EPYC, Linux) that other
jobs share, so single timings there swing by up to 2x; float32 logits,
epsilon = 0.1, one thread, with one command::

    python -m smoothce bench --sweep --logits normal,wide,trained,offset --rounds 7 \\
        --json docs/data/performance.json

This script, run by the documentation build, turns that file into the tables and the
plots; it does not time anything itself. Run the same command with another ``--json``
file to see your machine's numbers (it takes minutes: the sweep times 16 shapes on four
distributions).

**The logits.** A softmax does not care where its logits sit, but a loss's speed
may, so every shape is timed on four distributions of logits (all drawn by
``smoothce._bench_logits``, seed 0, labels uniform): standard normals (what every
benchmark used to time), *wide* logits (5 times standard normals, as a language
model's), a *trained* classifier's (3 times standard normals, plus 10 on the label's
logit) and *offset* logits (standard normals plus 50). Every candidate was timed on
the same arrays, in interleaved rounds, and the tables give medians.

**NumPy's exp** is one ``np.exp`` over the logits into a preallocated buffer: a
yardstick for the size of the work, not a lower bound (PyTorch's forward runs under
it at some shapes). PyTorch (the CPU build) is timed when it is installed.
"""

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from smoothce._bench import verdict

path = Path("../data/performance.json")
if not path.exists():  # run from the repository root rather than docs/examples
    path = Path("docs/data/performance.json")
data = json.loads(path.read_text())
results = data["results"]
names = list(data["logits"])
print(f"recorded with: {data['command']}")
print(
    f"smoothce {data['smoothce']}, {data['cores']} cores, load average before the run: "
    f"{data['load_average']:.2f}"
)
for name, d in data["logits"].items():
    print(f"  {name:8s} {d['formula']}: {d['stands_for']}")

by = {(r["logits"], tuple(r["shape"])): r for r in results}
shapes = sorted({tuple(r["shape"]) for r in results}, key=lambda s: (s[0] * s[1], s))
ns = sorted({s[0] for s in shapes})
ks = sorted({s[1] for s in shapes})


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
def cell(name, shape, key):
    """Median ms of ``key`` on one distribution and shape, with its multiple of NumPy's
    exp on the same arrays; "not measured" where it was not timed."""
    r = by.get((name, shape))
    if r is None or key not in r["times"]:
        return "not measured"
    t = r["times"][key]
    floor = r["times"].get("exp floor")
    return f"{t * 1e3:.3f} ({t / floor:.1f}x)" if floor else f"{t * 1e3:.3f}"


def table(key, torch_key):
    rows = []
    for shape in shapes:
        exp = by.get(("normal", shape), {}).get("times", {}).get("exp floor")
        rows.append(
            [f"{shape[0]} x {shape[1]}", "-" if exp is None else f"{exp * 1e3:.3f}"]
            + [cell(name, shape, key) for name in names]
            + [cell("normal", shape, torch_key)]
        )
    return Table(["N x K", "NumPy exp", *names, "PyTorch, normal"], rows)


# %%
# The tables
# ----------
# Median milliseconds per call, one thread (smoothce ``workers=1``, PyTorch
# ``torch.set_num_threads(1)``), on each distribution side by side, and in brackets
# each time as a multiple of NumPy's exp over the same logits (1x: as fast as one
# ``np.exp``). The first table is the loss alone, ``smoothce.cross_entropy``;
# PyTorch's column is its forward under ``no_grad`` on standard normals.
table("smoothce forward w1", "torch forward t1")

# %%
# Forward and gradient: ``smoothce.cross_entropy_with_grad(..., out=buf)``, and
# PyTorch's forward and ``backward()``.
table("smoothce fwd+grad w1", "torch fwd+bwd t1")

# %%
# The plot
# --------
# The same medians as multiples of NumPy's exp over the same logits, against the
# number of rows, one panel per number of classes and one line per distribution: how
# far each kind of logits keeps smoothce from one exponential of every element.
# PyTorch (on standard normals) is the grey dashed line, 1 the thin black one.
colours = dict(zip(names, ["tab:blue", "tab:purple", "tab:red", "tab:orange"], strict=False))


def over_exp(name, key, k):
    """(N, time / NumPy exp's) of one distribution and candidate at K = k."""
    points = []
    for n in ns:
        r = by.get((name, (n, k)))
        if r is not None and key in r["times"] and "exp floor" in r["times"]:
            points.append((n, r["times"][key] / r["times"]["exp floor"]))
    return np.array(points).reshape(-1, 2)


fig, axes = plt.subplots(
    2, len(ks), figsize=(3 * len(ks) + 1, 6.4), sharex=True, sharey=True, layout="constrained"
)
rows = [
    ("smoothce forward w1", "torch forward t1", "forward"),
    ("smoothce fwd+grad w1", "torch fwd+bwd t1", "forward + gradient"),
]
for row, (key, torch_key, what) in zip(axes, rows, strict=True):
    for ax, k in zip(row, ks, strict=True):
        for name in names:
            xy = over_exp(name, key, k)
            ax.loglog(*xy.T, marker="o", color=colours[name], label=f"{name} logits")
        xy = over_exp("normal", torch_key, k)
        ax.loglog(*xy.T, color="grey", linestyle="--", label="PyTorch, normal logits")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"{what}, K = {k}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    row[0].set_ylabel("time / NumPy's exp")
for ax in axes[-1]:
    ax.set_xlabel("rows N")
axes[0][-1].legend(fontsize=8)
fig.suptitle("smoothce against NumPy's exp over the same logits, float32, one thread")
plt.show()

# %%
# The sweep: smoothce's speed-up over N x K, per distribution
# -----------------------------------------------------------
# smoothce's forward+gradient (one thread, ``out=`` preallocated) against the naive
# NumPy code and against PyTorch's forward+backward (one thread), for N in
# {32, 256, 2048, 16384} and K in {10, 100, 1000, 32000}, one row per distribution.
# Each coloured cell is the ratio of the medians (blue: smoothce faster, red: slower;
# the colour bar reads it). A pale cell with "~" is a difference within noise (the
# two interquartile ranges overlap), a dark cross-hatched cell is a shape not
# measured (over ``--max-memory``, or PyTorch absent). Verdicts are those of
# ``python -m smoothce bench`` (``smoothce._bench.verdict``).
NOISE, MISSING = "#dddddd", "#4d4d4d"
TICKS = ["8x slower", "4x slower", "2x slower", "same", "2x faster", "4x faster", "8x faster"]
HATCH = {"noise": "..", "missing": "xx"}
KEY = [
    Patch(
        facecolor=NOISE,
        hatch="..",
        edgecolor="#a0a0a0",
        label="~  within noise (the q1-q3 ranges overlap)",
    ),
    Patch(facecolor=MISSING, hatch="xx", edgecolor="#a0a0a0", label="not measured"),
]


def grid(pairs):
    """log2 speed-ups of (ours, theirs) per shape, with each cell's kind and label."""
    values = np.full((len(ns), len(ks)), np.nan)
    kinds = np.full((len(ns), len(ks)), "missing", dtype=object)
    labels = np.full((len(ns), len(ks)), "", dtype=object)
    for (n, k), pair in pairs.items():
        if pair is None:
            continue
        ours, theirs = pair
        i, j = ns.index(n), ks.index(k)
        text = verdict(ours, theirs)
        if text == "within noise":
            kinds[i, j], labels[i, j] = "noise", "~"
            continue
        ratio = np.median(theirs) / np.median(ours)
        kinds[i, j], values[i, j] = "ratio", np.log2(ratio)
        labels[i, j] = f"{ratio:.1f}x" if ratio >= 1 else f"{1 / ratio:.1f}x\nslower"
    return values, kinds, labels


# sphinx_gallery_start_ignore
def draw(ax, values, kinds, labels):
    image = ax.imshow(values, cmap="RdBu", vmin=-3, vmax=3, origin="lower")
    special = np.where(kinds == "noise", 0, np.where(kinds == "missing", 1, np.nan))
    ax.imshow(special, cmap=ListedColormap([NOISE, MISSING]), vmin=0, vmax=1, origin="lower")
    for i in range(len(ns)):
        for j in range(len(ks)):
            if kinds[i, j] in HATCH:  # patterned, so that neither reads as a colour
                ax.add_patch(
                    plt.Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        fill=False,
                        hatch=HATCH[kinds[i, j]],
                        edgecolor="#a0a0a0",
                        linewidth=0,
                    )
                )
            if kinds[i, j] == "missing":
                continue
            dark = kinds[i, j] == "ratio" and abs(values[i, j]) > 1.8
            colour = "white" if dark else "black"
            size = 12 if labels[i, j] == "~" else 8
            ax.text(j, i, labels[i, j], ha="center", va="center", fontsize=size, color=colour)
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(ns)), [str(n) for n in ns])
    return image


# sphinx_gallery_end_ignore


def samples(name, shape, key):
    r = by.get((name, shape))
    return None if r is None or key not in r["samples"] else r["samples"][key]


ours = "smoothce fwd+grad w1"
against = [("naive fwd+grad", "naive NumPy"), ("torch fwd+bwd t1", "PyTorch, 1 thread")]
fig, axes = plt.subplots(
    len(names),
    2,
    figsize=(9, 2.7 * len(names) + 1.2),
    sharex=True,
    sharey=True,
    squeeze=False,
    layout="constrained",
)
for row, name in zip(axes, names, strict=True):
    for ax, (theirs, title) in zip(row, against, strict=True):
        pairs = {}
        for s in shapes:
            a, b = samples(name, s, ours), samples(name, s, theirs)
            pairs[s] = None if a is None or b is None else (a, b)
        image = draw(ax, *grid(pairs))
        ax.set_title(f"{name} logits: against {title}", fontsize=10)
    row[0].set_ylabel("rows N")
for ax in axes[-1]:
    ax.set_xlabel("classes K")
bar = fig.colorbar(image, ax=axes, shrink=0.5)
bar.set_ticks(range(-3, 4), labels=TICKS)
bar.set_label("the other's time / smoothce's (log scale)")
fig.legend(handles=KEY, loc="outside lower center", ncol=2, fontsize=9)
fig.suptitle("smoothce forward+gradient, float32, one thread (blue: smoothce faster)")
plt.show()

# %%
# What the logits cost
# --------------------
# smoothce's forward+gradient on each distribution against itself on standard
# normals of the same shape (blue: faster than on standard normals, red: slower),
# timed in the same rounds where the four distributions' arrays fit in memory
# together, and one after another where they did not (K = 32000, N >= 2048). A loss
# whose speed did not depend on the logits would be "~" everywhere.
others = [name for name in names if name != "normal"]
if "normal" in names and others:
    fig, axes = plt.subplots(
        1,
        len(others),
        figsize=(3.4 * len(others) + 1.5, 3.9),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for ax, name in zip(axes[0], others, strict=True):
        pairs = {}
        for s in shapes:
            a, b = samples(name, s, ours), samples("normal", s, ours)
            pairs[s] = None if a is None or b is None else (a, b)
        image = draw(ax, *grid(pairs))
        ax.set_title(f"{name} against normal logits", fontsize=10)
        ax.set_xlabel("classes K")
    axes[0][0].set_ylabel("rows N")
    bar = fig.colorbar(image, ax=axes, shrink=0.8)
    bar.set_ticks(range(-3, 4), labels=TICKS)
    bar.set_label("time on standard normals / on these")
    fig.legend(handles=KEY, loc="outside lower center", ncol=2, fontsize=9)
    fig.suptitle(
        "smoothce forward+gradient, float32, one thread: each kind of logits "
        "against standard normals"
    )
    plt.show()
