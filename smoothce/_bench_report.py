"""The wording of ``python -m smoothce bench``: legend, tables, summary and sweep grids.

Everything here reads :class:`~smoothce._bench.Measurement` objects and prints; the
timing itself is :mod:`smoothce._bench`'s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TextIO

from ._bench import (
    MIN_SAMPLE_SECONDS,
    Measurement,
    join_and,
    memory_wording,
    size_text,
    thread_word,
    verdict,
)
from ._bench_logits import distribution

__all__ = [
    "comparisons",
    "cross_comparisons",
    "format_summary",
    "format_sweep",
    "format_table",
    "print_legend",
]

#: Every candidate: what it is, printed once above the tables.
LEGEND = [
    ("NumPy exp", "one np.exp over the logits into a preallocated buffer: NumPy's exp, a "
     "yardstick rather than a lower bound (PyTorch's forward can run under it)"),
    ("smoothce forward", "smoothce.cross_entropy(logits, labels, epsilon, workers=T): the loss"),
    ("smoothce fwd+grad", "smoothce.cross_entropy_with_grad(..., workers=T, out=a "
     "preallocated array): loss and gradient in one call"),
    ("naive forward", "the softmax-then-log NumPy code users write "
     "(smoothce._baselines.naive_loss): the loss"),
    ("naive fwd+grad", "the same code returning the loss and the gradient p - q "
     "(naive_loss_and_grad)"),
    ("torch forward", "torch.nn.functional.cross_entropy(label_smoothing=epsilon) under "
     "no_grad, torch.set_num_threads(T)"),
    ("torch fwd+bwd", "the same with .backward() to the logits"),
    ("z_loss, softcap", "with --lm: smoothce fwd+grad with z_loss=1e-4, or softcap=30.0, one "
     "thread, against the plain fwd+grad"),
    ("linear ...", "with --linear N D V: linear_cross_entropy_with_grad (fused, never builds "
     "the (N, V) logits) against the unfused head (logits, in-place loss and gradient, "
     "then the products) and the three matrix products alone; one thread, the "
     "classifier scaled so that the logits have each distribution's spread; then the "
     "fused head with its default workers and the unfused one, BLAS on every core"),
]  # fmt: skip
COLUMNS = [
    ("calls/sample", f"calls timed back to back in one sample, enough for >= "
     f"{MIN_SAMPLE_SECONDS * 1e3:.0f} ms (in the last round)"),
    ("median", "time per call, median over the samples (one sample per round)"),
    ("q1-q3", "the interquartile range of the samples: the spread"),
    ("x exp", "median over NumPy exp's median, with the range q1/q3(exp) to q3/q1(exp)"),
]  # fmt: skip


def _ms(t: float) -> str:
    return f"{t * 1e3:.4f}" if t < 1e-3 else f"{t * 1e3:.3f}"


def print_legend(out: TextIO, *, sweep: bool = False, logits: Iterable[str] = ()) -> None:
    """Explain the candidates, the distributions of ``logits`` and the columns."""
    print("Candidates (all on the same arrays; T threads = smoothce workers=T, "
          "torch.set_num_threads(T)):", file=out)  # fmt: skip
    for name, text in LEGEND:
        print(f"  {name:18s} {text}", file=out)
    names = list(logits)
    if names:
        print("Logits (smoothce._bench_logits, seed 0; labels uniform):", file=out)
    for name in names:
        d = distribution(name)
        print(f"  {name:18s} {d.formula}: {d.stands_for}", file=out)
    if not sweep:
        print("Columns:", file=out)
        for name, text in COLUMNS:
            print(f"  {name:18s} {text}", file=out)
    print(
        'Verdicts compare medians; "within noise" when the two q1-q3 ranges overlap.',
        file=out,
    )


def comparisons(m: Measurement) -> list[tuple[str, str]]:
    """The pairs (ours, theirs) that the verdicts of one shape are about."""
    ws = sorted(int(key.rsplit("w", 1)[1]) for key in m.times if key.startswith("smoothce f"))
    pairs: list[tuple[str, str]] = []
    for w in sorted(set(ws)):
        fw, fg = f"smoothce forward w{w}", f"smoothce fwd+grad w{w}"
        pairs += [
            (fg, "naive fwd+grad"),
            (fw, "naive forward"),
            (fg, f"torch fwd+bwd t{w}"),
            (fw, f"torch forward t{w}"),
        ]
    if len(set(ws)) > 1:
        lo, hi = min(ws), max(ws)
        pairs += [
            (f"smoothce forward w{hi}", f"smoothce forward w{lo}"),
            (f"smoothce fwd+grad w{hi}", f"smoothce fwd+grad w{lo}"),
        ]
    pairs += [(kind, "smoothce fwd+grad w1") for kind in ("smoothce z_loss", "smoothce softcap")]
    pairs += [("linear fused", "linear unfused"), ("linear fused", "linear products")]
    pairs += [("linear fused blas", "linear unfused blas"), ("linear fused blas", "linear fused")]
    return [(a, b) for a, b in pairs if a in m.samples and b in m.samples]


#: Candidates compared across distributions: smoothce's, and the yardsticks (whether
#: the naive code or NumPy's exp care about the logits shows how fair the rest is).
_ACROSS = ("exp floor", "naive fwd+grad", "linear unfused", "linear products")


def _where(m: Measurement) -> str:
    """Where a measurement was made: its shape, or the linear head's sizes."""
    n, k = m.shape
    return f"({n}, {k})" if m.linear_d is None else f"linear ({n}, {m.linear_d}, {k})"


def _groups(results: Sequence[Measurement]) -> list[list[Measurement]]:
    """Consecutive measurements of one shape (one per distribution), in order."""
    out: list[list[Measurement]] = []
    for m in results:
        if out and (_where(out[-1][0]), out[-1][0].dtype) == (_where(m), m.dtype):
            out[-1].append(m)
        else:
            out.append([m])
    return out


def _reference(group: Sequence[Measurement]) -> Measurement:
    """The distribution others are compared with: standard normals, else the first."""
    return next((m for m in group if m.logits == "normal"), group[0])


def cross_comparisons(group: Sequence[Measurement]) -> list[tuple[Measurement, str, str]]:
    """(measurement, key, verdict) of each candidate against itself on the reference
    distribution of ``group`` (:func:`_reference`): how much the logits cost it."""
    ref = _reference(group)
    out = []
    for m in group:
        if m is ref:
            continue
        for key in m.samples:
            ours = key.startswith(("smoothce", "linear fused"))
            if key in ref.samples and (ours or key in _ACROSS):
                out.append((m, key, verdict(m.samples[key], ref.samples[key])))
    return out


def _one(x: float) -> str:
    """One decimal, without a "-0.0" for a mean a hair below zero."""
    text = f"{x:.1f}"
    return "0.0" if text == "-0.0" else text


def _stats_line(m: Measurement) -> str:
    d = distribution(m.logits)
    s = m.logit_stats
    if not s:
        return d.formula
    return (
        f"{d.formula}: mean {_one(s['mean'])}, std {_one(s['std'])}, max {_one(s['max'])}; the "
        f"label's logit is its row's largest in {100 * s['label_is_max']:.0f}% of rows"
    )


def _x_exp(m: Measurement, key: str) -> str:
    """A candidate's median over NumPy exp's, with the range of the quartiles' ratios."""
    floor = m.spread.get("exp floor")
    if floor is None or floor[0] <= 0:
        return "-"
    q1, q3 = m.spread[key]
    return f"{m.times[key] / m.times['exp floor']:.1f} ({q1 / floor[1]:.1f}-{q3 / floor[0]:.1f})"


def _per_distribution(texts: Sequence[tuple[str, str]]) -> str:
    """``[(logits, text)]`` as one text when they agree, else ``logits: text`` each."""
    if len({t for _, t in texts}) == 1:
        return texts[0][1]
    return "; ".join(f"{name}: {t}" for name, t in texts)


def format_table(results: list[Measurement], out: TextIO) -> None:
    """Print, per shape, every candidate's median and spread on each distribution (one
    row each; with several, a column of verdicts against the reference one), the
    verdicts of the comparisons and extra memory."""
    for group in _groups(results):
        _format_group(group, out)


def _format_group(group: Sequence[Measurement], out: TextIO) -> None:
    first, ref = group[0], _reference(group)
    several = len(group) > 1
    n, k = first.shape
    head = f"linear head, d={first.linear_d}, " if first.linear_d is not None else ""
    names = [m.logits for m in group]
    how = ""
    if several:
        together = len(ref.timed_with) > 1
        how = f"; {join_and(names)} logits " + (
            "timed in the same rounds" if together else "timed one after another (memory)"
        )
    print(
        f"\n({n}, {k}) {first.dtype}, {head}epsilon={first.epsilon}, logits "
        f"{size_text(first.logits_bytes)}, {first.rounds} sample(s) per candidate{how}",
        file=out,
    )
    width = max(len(name) for name in names) + 1
    for m in group:
        print(f"  {m.logits + ':':{width}s} {_stats_line(m)}", file=out)
    if first.linear_d is not None:
        print(f"  threads: {first.blas}; smoothce workers=1", file=out)
    vs = f"{'vs ' + ref.logits:>14s}" if several else ""
    print(
        f"  {'candidate':28s} {'logits':{width}s} {'calls/sample':>12s} {'median ms':>10s} "
        f"{'q1-q3 ms':>19s} {'x exp':>15s}{vs}",
        file=out,
    )
    keys = list(dict.fromkeys(key for m in group for key in m.times))
    for key in keys:
        label = next(m.labels[key] for m in group if key in m.labels)
        for m in group:
            if key not in m.times:
                continue
            q1, q3 = m.spread[key]
            against = ""
            if several and m is not ref and key in ref.samples:
                against = verdict(m.samples[key], ref.samples[key]).split(" (")[0]
                against = f"{against:>14s}"
            print(
                f"  {label:28s} {m.logits:{width}s} {m.calls_per_sample[key]:12d} "
                f"{_ms(m.times[key]):>10s} {_ms(q1) + '-' + _ms(q3):>19s} "
                f"{_x_exp(m, key):>15s}{against}",
                file=out,
            )
            label = ""
    skipped = dict.fromkeys(
        f"{key}: not timed: {why}" for m in group for key, why in m.skipped.items()
    )
    for line in skipped:
        print(f"  {line}", file=out)
    pairs = list(dict.fromkeys(pair for m in group for pair in comparisons(m)))
    if pairs:
        print("  verdicts:", file=out)
    for a, b in pairs:
        texts = [(m.logits, m.verdict(a, b) or "-") for m in group if a in m.labels]
        label = f"{first.labels.get(a, a)} vs {first.labels.get(b, b)}"
        text = "; ".join(f"{name}: {t}" for name, t in texts) if several else texts[0][1]
        print(f"  - {label}: {text}", file=out)
    memory = list(dict.fromkeys(key for m in group for key in m.extra_memory))
    if memory:
        print(
            "  extra peak memory (NumPy allocations during one call, beyond a returned gradient):",
            file=out,
        )
    for key in memory:
        texts = [
            (m.logits, memory_wording(m.extra_memory[key], m.logits_bytes))
            for m in group
            if key in m.extra_memory
        ]
        print(f"  - {first.labels.get(key, key)}: {_per_distribution(texts)}", file=out)


_VERDICT = re.compile(r"(\d+\.\d+)x (faster|slower)")


def _across(items: Sequence[tuple[str, str]]) -> str:
    """One verdict for a comparison made at several places, from ``(where, verdict)``.

    >>> _across([("(32, 10)", "1.3x faster"), ("(256, 10)", "within noise")])
    '1.3x faster at (32, 10); within noise at (256, 10)'
    >>> _across([(f"({n}, 10)", f"{n / 10:.1f}x slower") for n in (20, 30, 40)])
    'slower at all 3 shapes (2.0x-4.0x)'
    """
    few = any("no spread" in text for _, text in items)
    groups: dict[str, list[tuple[str, str]]] = {}
    for where, text in items:
        match = _VERDICT.match(text)
        word = match[2] if match else text.split(" (")[0]
        groups.setdefault(word, []).append((where, match[1] + "x" if match else ""))
    total = len(items)
    parts = []
    for word in ("faster", "within noise", "the same time", "slower"):
        found = groups.get(word, [])
        if not found:
            continue
        if total == 1 or (len(found) <= 2 and len(found) < total):  # name the places
            if found[0][1]:  # "2.7x faster at A and 2.6x at B"
                places = [f"{found[0][1]} {word} at {found[0][0]}"]
                places += [f"{r} at {w}" for w, r in found[1:]]
            else:  # "within noise at A and B"
                places = [f"{word} at {found[0][0]}", *(w for w, _ in found[1:])]
            parts.append(" and ".join(places))
            continue
        if len(found) < total:
            scope = f"at {len(found)} of {total} shapes"
        else:
            scope = "at both shapes" if total == 2 else f"at all {total} shapes"
        ratios = sorted((float(r[:-1]), r) for _, r in found if r)
        span = f" ({ratios[0][1]}-{ratios[-1][1]})" if ratios else ""
        parts.append(f"{word} {scope}{span}")
    text = "; ".join(parts)
    if few:
        text += " (from fewer than 3 samples: no spread to judge the noise by)"
    return text


def format_summary(results: list[Measurement], out: TextIO) -> None:
    """One line per comparison: its verdicts at every shape, for each distribution,
    then each distribution against the reference one."""
    if not results:
        return
    names = list(dict.fromkeys(m.logits for m in results))
    wheres = list(dict.fromkeys(_where(m) for m in results))
    print(
        f"\nSummary: each comparison over the {len(wheres)} shape(s) it was made at "
        f"({', '.join(wheres)}), on {join_and(names)} logits:",
        file=out,
    )
    # Keyed by (comparison, distribution), in order of first appearance, so that the
    # lines of one comparison on every distribution stand together.
    lines: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for m in results:
        for a, b in comparisons(m):
            key = (f"{m.labels[a]} vs {m.labels[b]}", f"{m.logits} logits")
            lines.setdefault(key, []).append((_where(m), m.verdict(a, b) or ""))
    for group in _groups(results):
        ref = _reference(group)
        for m, c, text in cross_comparisons(group):
            key = (m.labels[c], f"{m.logits} vs {ref.logits} logits")
            lines.setdefault(key, []).append((_where(m), text))
    order = {name: i for i, name in enumerate(names)}
    firsts = list(dict.fromkeys(label for label, _ in lines))
    for label in firsts:
        for (same, on), items in sorted(
            ((k, v) for k, v in lines.items() if k[0] == label),
            key=lambda kv: order.get(kv[0][1].split(" ")[0], 0),
        ):
            print(f"  {same}, {on}: {_across(items)}", file=out)


def _cell_text(v: str | None) -> str:
    """A verdict as a grid cell: "2.0x", "1.8x slower", "~" (within noise), "-"."""
    if v is None:
        return "-"
    if v == "within noise":
        return "~"
    ratio, word = v.split(" ")[:2]
    return ratio if word == "faster" else f"{ratio} slower"


def _grid(
    shapes: Iterable[tuple[int, int]], cell: Callable[[tuple[int, int]], str | None], out: TextIO
) -> None:
    """Print a grid of ``cell(shape)`` verdicts, rows N and columns K."""
    ns = sorted({s[0] for s in shapes})
    ks = sorted({s[1] for s in shapes})
    print('("1.8x slower" where it is slower, "~" within noise, "-" not timed)', file=out)
    corner = "N \\ K"
    print(f"  {corner:>7s}" + "".join(f"{k:>13d}" for k in ks), file=out)
    for n in ns:
        cells = "".join(f"{_cell_text(cell((n, k))):>13s}" for k in ks)
        print(f"  {n:>7d}{cells}", file=out)


_Cells = Callable[[tuple[int, int]], "str | None"]


def _pair_cells(by_shape: dict[tuple[int, int], Measurement], ours: str, theirs: str) -> _Cells:
    """Cells of ``ours`` against ``theirs`` on each shape."""

    def cell(shape: tuple[int, int]) -> str | None:
        m = by_shape.get(shape)
        return None if m is None else m.verdict(ours, theirs)

    return cell


def _across_cells(
    here: dict[tuple[int, int], Measurement], there: dict[tuple[int, int], Measurement], key: str
) -> _Cells:
    """Cells of candidate ``key`` on one distribution against itself on another."""

    def cell(shape: tuple[int, int]) -> str | None:
        a, b = here.get(shape), there.get(shape)
        if a is None or b is None or key not in a.samples or key not in b.samples:
            return None
        return verdict(a.samples[key], b.samples[key])

    return cell


def format_sweep(results: list[Measurement], threads: int, out: TextIO) -> None:
    """Print the sweep's grids: smoothce's speed-up against naive NumPy and PyTorch on
    each distribution, and each distribution's cost against the reference one."""
    names = list(dict.fromkeys(m.logits for m in results))
    by_name = {name: {m.shape: m for m in results if m.logits == name} for name in names}
    ours = f"smoothce fwd+grad w{threads}"
    tw = thread_word(threads)
    for name in names:
        for theirs, label in (
            ("naive fwd+grad", "naive fwd+grad"),
            (f"torch fwd+bwd t{threads}", f"torch fwd+bwd, {tw}"),
        ):
            print(
                f"\nsmoothce fwd+grad, {tw}, against {label}, on {name} logits: how many "
                "times faster smoothce is",
                file=out,
            )
            _grid(by_name[name], _pair_cells(by_name[name], ours, theirs), out)
    ref = "normal" if "normal" in names else names[0]
    for name in names:
        if name == ref:
            continue
        print(
            f"\nsmoothce fwd+grad, {tw}, on {name} logits against {ref} logits: how many "
            "times faster on these logits",
            file=out,
        )
        shapes = set(by_name[name]) | set(by_name[ref])
        _grid(shapes, _across_cells(by_name[name], by_name[ref], ours), out)
    skipped = [(m.shape, m.logits, key, why) for m in results for key, why in m.skipped.items()]
    for shape, name, key, why in skipped:
        if name == names[0]:  # the same for every distribution
            print(f"  {shape}: {key} not timed: {why}", file=out)
