"""Timing smoothce against the naive NumPy code, the exp floor and PyTorch.

Used by ``python -m smoothce bench``. The method, chosen for shared machines whose
timings swing by 2x from one moment to the next:

* **Samples long enough to measure.** A sample times ``number`` calls back to back,
  with ``number`` chosen once per candidate (as :meth:`timeit.Timer.autorange` does)
  so that a sample lasts at least :data:`MIN_SAMPLE_SECONDS`; the sample's value is
  its time divided by ``number``, the time per call.
* **Interleaved candidates.** A round takes one sample of every candidate, in an
  order rotated from round to round, so slow drifts of the machine hit all alike.
* **Thread counts outside the timed region.** Before a candidate's sample, smoothce's
  ``workers`` is bound into the call and ``torch.set_num_threads`` is called; NumPy's
  BLAS is held at one thread for the whole run (with :mod:`threadpoolctl`, when
  installed). When a call is shorter than a sample, one untimed call follows the
  switch, so a thread pool's wake-up is not charged to the candidate.
* **Median and spread.** Each candidate reports the median of its samples and their
  interquartile range; a comparison of two candidates is a :func:`verdict`: "N.Nx
  faster", "N.Nx slower", or "within noise" when the two ranges overlap.

Extra memory is the peak of NumPy's allocations during one call (NumPy reports them
to :mod:`tracemalloc`), beyond the gradient the call returns.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from ._baselines import exp_floor, naive_loss, naive_loss_and_grad
from ._loss import cross_entropy, cross_entropy_with_grad
from ._parallel import available_cores

__all__ = [
    "DEFAULT_SHAPES",
    "MIN_SAMPLE_SECONDS",
    "SWEEP_K",
    "SWEEP_N",
    "Measurement",
    "Spread",
    "format_sweep",
    "format_table",
    "measure_shape",
    "memory_wording",
    "verdict",
]

#: The default run: the small calls of training loops and two large shapes, all
#: small enough that the naive code stays far below 1.5 GiB (larger ones by ``--shape``).
DEFAULT_SHAPES = [(32, 10), (256, 10), (1024, 100), (8192, 1000), (128, 32000)]
#: The ``--sweep`` grid: rows N, columns K.
SWEEP_N = (32, 256, 2048, 16384)
SWEEP_K = (10, 100, 1000, 32000)
#: Each sample times enough calls to last at least this long.
MIN_SAMPLE_SECONDS = 0.02

#: Every candidate: what it is, printed once above the tables.
LEGEND = [
    ("exp floor", "one np.exp over the logits into a preallocated buffer: the least any "
     "exact method must do"),
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
     "then the products) and the three matrix products alone; one thread"),
]  # fmt: skip
COLUMNS = [
    ("calls/sample", f"calls timed back to back in one sample, enough for >= "
     f"{MIN_SAMPLE_SECONDS * 1e3:.0f} ms (in the last round)"),
    ("median", "time per call, median over the samples (one sample per round)"),
    ("q1-q3", "the interquartile range of the samples: the spread"),
    ("x floor", "median over the exp floor's median, with the range q1/q3(floor) to "
     "q3/q1(floor)"),
]  # fmt: skip

#: Peak memory of each kind of candidate in units of the logits' size (measured with
#: tracemalloc: the naive code holds five (N, K) arrays at once, PyTorch a copy of the
#: logits, their log-softmax and the gradient); used to skip what would not fit.
_MEMORY_FACTOR = {
    "exp floor": 1.0, "smoothce forward": 0.0, "smoothce fwd+grad": 1.0, "naive forward": 5.0,
    "naive fwd+grad": 5.0, "torch forward": 4.0, "torch fwd+bwd": 4.0,
    "smoothce z_loss": 1.0, "smoothce softcap": 2.0,
}  # fmt: skip

#: The language-model options, timed by ``--lm`` beside the plain forward + gradient
#: (one thread): PaLM's z-loss and Gemma 2's logit soft-capping.
LM_OPTIONS = {"smoothce z_loss": {"z_loss": 1e-4}, "smoothce softcap": {"softcap": 30.0}}


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range of the per-call times of one candidate."""

    median: float
    q1: float
    q3: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        if len(samples) == 0:
            raise ValueError("samples must not be empty; got 0 samples.")
        q1, med, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
        return cls(float(med), float(q1), float(q3), len(samples))


def _times(x: float) -> str:
    """A ratio >= 1 as "N.Nx", with two decimals where one would print 1.0."""
    return f"{x:.2f}x" if x < 1.095 else f"{x:.1f}x"


def verdict(ours: Sequence[float], theirs: Sequence[float]) -> str:
    """How ``ours`` compares with ``theirs``, from the per-call times of their samples.

    Parameters
    ----------
    ours, theirs : sequence of float
        Seconds per call, one value per sample.

    Returns
    -------
    str
        ``"within noise"`` when the interquartile ranges overlap; otherwise
        ``"N.Nx faster"`` or ``"N.Nx slower"``, N.N being the ratio of the medians
        taken the way round that makes it at least 1. With fewer than three samples on
        a side there is no spread to judge by, and the wording says so.

    Examples
    --------
    >>> verdict([1.0, 1.1, 1.2], [2.9, 3.0, 3.1])
    '2.7x faster'
    >>> verdict([3.0, 3.0, 3.0], [1.0, 1.0, 1.0])
    '3.0x slower'
    >>> verdict([1.0, 1.5, 2.0], [1.2, 1.6, 2.2])
    'within noise'
    """
    a, b = Spread.of(ours), Spread.of(theirs)
    few = min(a.n, b.n) < 3
    if not few and a.q1 <= b.q3 and b.q1 <= a.q3:
        return "within noise"
    if a.median == b.median:
        text = "the same time"
    elif a.median < b.median:
        text = f"{_times(b.median / a.median)} faster"
    else:
        text = f"{_times(a.median / b.median)} slower"
    if few:
        text += f" (from {min(a.n, b.n)} sample(s): no spread to judge the noise by)"
    return text


def _bytes(b: float) -> str:
    size = abs(b)
    if size >= 2**20:
        return f"{b / 2**20:.1f} MiB"
    if size >= 2**10:
        return f"{b / 2**10:.1f} KiB"
    return f"{b:.0f} B"


def memory_wording(extra: int, logits_bytes: int) -> str:
    """Extra memory as a signed size and its share of the logits.

    >>> memory_wording(1153434, 25_600_000)
    '+1.1 MiB (4.5% of the logits)'
    >>> memory_wording(538192, 10240)
    '+525.6 KiB (52.6x the logits)'
    """
    sign = "+" if extra >= 0 else "-"
    share = extra / logits_bytes if logits_bytes else math.inf
    if abs(share) >= 1:
        of = f"{abs(share):.1f}x the logits"
    else:
        of = f"{100 * abs(share):.1f}% of the logits"
    return f"{sign}{_bytes(abs(extra))} ({of})"


@dataclass
class Candidate:
    """One timed callable: ``key`` names it in the JSON, ``label`` in the tables."""

    key: str
    label: str
    kind: str  # floor, smoothce, naive or torch
    threads: int
    fn: Callable[[], Any]
    memory: Callable[[], Any] | None = None  # the call whose extra memory is reported
    returns_grad: bool = False  # the memory call allocates the gradient it returns


@dataclass
class Measurement:
    """Per-call times of every candidate on one shape, and extra memory in bytes.

    ``times`` holds the medians (seconds), ``spread`` the quartiles ``[q1, q3]`` and
    ``samples`` every sample; ``skipped`` says why a candidate was not timed.
    """

    shape: tuple[int, int]
    dtype: str
    epsilon: float
    logits_bytes: int
    rounds: int = 0
    times: dict[str, float] = field(default_factory=dict)
    spread: dict[str, list[float]] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    calls_per_sample: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    extra_memory: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    blas: str = ""

    def ratio(self, a: str, b: str) -> float | None:
        """Median time of ``a`` over that of ``b``, or None if either is missing."""
        if a in self.times and b in self.times and self.times[b] > 0:
            return self.times[a] / self.times[b]
        return None

    def verdict(self, ours: str, theirs: str) -> str | None:
        """:func:`verdict` of two candidates, or None if either was not timed."""
        if ours in self.samples and theirs in self.samples:
            return verdict(self.samples[ours], self.samples[theirs])
        return None


def _import_torch() -> Any:
    try:
        return importlib.import_module("torch")  # optional; typed loosely
    except ImportError:
        return None


def _thread_word(t: int) -> str:
    return f"{t} thread" + ("" if t == 1 else "s")


@contextlib.contextmanager
def _blas_on_one_thread() -> Iterator[str]:
    """Hold NumPy's BLAS at one thread (threadpoolctl), and say what was done."""
    try:
        threadpoolctl: Any = importlib.import_module("threadpoolctl")
    except ImportError:
        yield "NumPy's BLAS threads as configured (threadpoolctl is not installed)"
        return
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield "NumPy's BLAS held at 1 thread (threadpoolctl)"


def _candidates(
    logits: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    threads: Sequence[int],
    kinds: set[str],
    torch: Any,
) -> list[Candidate]:
    out: list[Candidate] = []
    if "exp floor" in kinds:
        buf = np.empty_like(logits)
        buf.fill(0.0)  # touch the pages so that page faults are not timed
        out.append(Candidate("exp floor", "exp floor", "floor", 1, lambda: exp_floor(logits, buf)))
    if "smoothce fwd+grad" in kinds:
        grad = np.empty_like(logits)
        grad.fill(0.0)
    for w in threads:

        def forward(w: int = w) -> Any:
            return cross_entropy(logits, labels, epsilon, workers=w)

        def forward_grad(w: int = w) -> Any:
            return cross_entropy_with_grad(logits, labels, epsilon, workers=w, out=grad)

        tw = _thread_word(w)
        for kind, fn in (("smoothce forward", forward), ("smoothce fwd+grad", forward_grad)):
            if kind in kinds:
                label = f"{kind}, {tw}"
                out.append(Candidate(f"{kind} w{w}", label, "smoothce", w, fn, memory=fn))
    for kind, options in LM_OPTIONS.items():
        if kind in kinds:
            lm_grad = np.empty_like(logits)

            def lm_call(options: dict[str, float] = options, g: np.ndarray = lm_grad) -> Any:
                return cross_entropy_with_grad(
                    logits, labels, epsilon, workers=1, out=g, **options
                )

            ((name, value),) = options.items()
            label = f"smoothce fwd+grad {name}={value}"
            out.append(Candidate(kind, label, "smoothce", 1, lm_call, memory=lm_call))
    if "naive forward" in kinds:

        def naive_fwd() -> Any:
            return naive_loss(logits, labels, epsilon)

        out.append(
            Candidate("naive forward", "naive forward", "naive", 1, naive_fwd, memory=naive_fwd)
        )
    if "naive fwd+grad" in kinds:

        def naive_fg() -> Any:
            return naive_loss_and_grad(logits, labels, epsilon)

        out.append(
            Candidate(
                "naive fwd+grad", "naive fwd+grad", "naive", 1, naive_fg, memory=naive_fg,
                returns_grad=True,
            )
        )  # fmt: skip
    if torch is not None and kinds & {"torch forward", "torch fwd+bwd"}:
        z = torch.from_numpy(logits.copy()).requires_grad_(True)
        y = torch.from_numpy(labels)
        fn = torch.nn.functional.cross_entropy

        def t_forward() -> Any:
            with torch.no_grad():
                return fn(z, y, label_smoothing=epsilon)

        def t_forward_backward() -> Any:
            z.grad = None
            loss = fn(z, y, label_smoothing=epsilon)
            loss.backward()
            return loss

        for t in threads:
            tw = _thread_word(t)
            if "torch forward" in kinds:
                out.append(
                    Candidate(f"torch forward t{t}", f"torch forward, {tw}", "torch", t, t_forward)
                )
            if "torch fwd+bwd" in kinds:
                out.append(
                    Candidate(
                        f"torch fwd+bwd t{t}", f"torch fwd+bwd, {tw}", "torch", t,
                        t_forward_backward,
                    )
                )  # fmt: skip
    return out


def _calls_per_sample(fn: Callable[[], Any], min_seconds: float) -> int:
    """The number of back-to-back calls of ``fn`` that last at least ``min_seconds``."""
    fn()  # warm-up: first-call costs (caches, page faults) are not a sample
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return number
        # Aim 20% past the target from this estimate, growing at most 100x a step.
        guess = math.ceil(number * 1.2 * min_seconds / max(elapsed, 1e-9))
        number = max(number + 1, min(guess, 100 * number))


def _run_rounds(
    cands: list[Candidate],
    set_threads: Callable[[Candidate], None],
    rounds: int,
    min_sample_seconds: float,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per-call times of ``rounds`` interleaved samples of every candidate."""
    numbers: dict[str, int] = {}
    for c in cands:
        set_threads(c)
        numbers[c.key] = _calls_per_sample(c.fn, min_sample_seconds)
    samples: dict[str, list[float]] = {c.key: [] for c in cands}
    for r in range(rounds):
        if progress is not None:
            progress(r)
        # Rotate the order so that no candidate always follows the same one.
        shift = r % max(1, len(cands))
        for c in cands[shift:] + cands[:shift]:
            number = numbers[c.key]
            set_threads(c)
            if number > 1:
                c.fn()  # untimed: wake the thread pools after the switch
            t0 = time.perf_counter()
            for _ in range(number):
                c.fn()
            elapsed = time.perf_counter() - t0
            samples[c.key].append(elapsed / number)
            if elapsed > 4 * min_sample_seconds and number > 1:
                # Calibrated while the machine was quiet: fewer calls from now on, still
                # enough for the minimum at this slower pace (keeps a run's time bounded).
                numbers[c.key] = max(1, math.ceil(number * 1.2 * min_sample_seconds / elapsed))
    return samples, numbers


def _extra_memory(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return int(peak)


ALL_KINDS = frozenset(
    {
        "exp floor", "smoothce forward", "smoothce fwd+grad", "naive forward",
        "naive fwd+grad", "torch forward", "torch fwd+bwd",
    }
)  # fmt: skip


def measure_shape(
    shape: tuple[int, int],
    *,
    dtype: str = "float32",
    epsilon: float = 0.1,
    workers: Iterable[int] | None = None,
    rounds: int = 7,
    kinds: Iterable[str] = ALL_KINDS,
    min_sample_seconds: float = MIN_SAMPLE_SECONDS,
    max_memory_bytes: float = math.inf,
    memory: bool = True,
    progress: TextIO | None = None,
) -> Measurement:
    """Time every candidate on the same arrays of ``shape``.

    Parameters
    ----------
    shape : (int, int)
        ``(N, K)`` of the logits.
    dtype : str
        Logits dtype: float16, float32 or float64.
    epsilon : float
        Label smoothing.
    workers : iterable of int, optional
        smoothce ``workers`` and PyTorch thread counts (default: 1 and all cores).
    rounds : int
        Samples per candidate, one per round.
    kinds : iterable of str
        Which candidates (:data:`ALL_KINDS`); PyTorch's only when it is installed.
    min_sample_seconds : float
        Each sample times enough calls to last this long.
    max_memory_bytes : float
        Candidates whose estimated peak memory exceeds this are skipped (and say so).
    memory : bool
        Whether to measure extra peak memory (one more call of each candidate).
    progress : file, optional
        Where to print the progress of the rounds.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1; got rounds={rounds}.")
    n, k = shape
    kinds = set(kinds)
    rng = np.random.default_rng(0)
    nbytes = n * k * np.dtype(dtype).itemsize
    m = Measurement((n, k), np.dtype(dtype).name, epsilon, nbytes, rounds=rounds)
    for kind in sorted(kinds):
        need = (1 + _MEMORY_FACTOR[kind]) * nbytes  # with the logits themselves
        if need > max_memory_bytes:
            kinds.discard(kind)
            m.skipped[kind] = (
                f"would need about {need / 2**30:.1f} GiB, over the limit of "
                f"{max_memory_bytes / 2**30:.1f} GiB (--max-memory)"
            )
    torch = _import_torch() if kinds & {"torch forward", "torch fwd+bwd"} else None
    if torch is None and kinds & {"torch forward", "torch fwd+bwd"}:
        m.skipped["torch"] = "PyTorch is not installed"
    # float16 is drawn in float32 and rounded: NumPy draws no float16 normals.
    draw = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    logits = rng.standard_normal(shape, dtype=draw).astype(dtype, copy=False)
    labels = rng.integers(0, k, size=n)
    threads = sorted(set(workers)) if workers is not None else sorted({1, available_cores()})
    cands = _candidates(logits, labels, epsilon, threads, kinds, torch)

    def set_threads(c: Candidate) -> None:
        if c.kind == "torch" and torch is not None:
            torch.set_num_threads(c.threads)

    def show(r: int) -> None:
        print(f"\r  {n} x {k} {m.dtype}: round {r + 1}/{rounds}", end="", file=progress)
        if progress is not None:
            progress.flush()

    with _blas_on_one_thread() as m.blas:
        samples, numbers = _run_rounds(
            cands, set_threads, rounds, min_sample_seconds, show if progress else None
        )
    if progress is not None:
        print(file=progress)
    _record(m, cands, samples, numbers, logits.nbytes if memory else None)
    return m


def _record(
    m: Measurement,
    cands: Sequence[Candidate],
    samples: dict[str, list[float]],
    numbers: dict[str, int],
    grad_bytes: int | None,
) -> None:
    """Store each candidate's median, quartiles and samples in ``m``; with
    ``grad_bytes``, also its extra peak memory (less a gradient it returns)."""
    for c in cands:
        s = Spread.of(samples[c.key])
        m.times[c.key] = s.median
        m.spread[c.key] = [s.q1, s.q3]
        m.samples[c.key] = samples[c.key]
        m.calls_per_sample[c.key] = numbers[c.key]
        m.labels[c.key] = c.label
        if grad_bytes is not None and c.memory is not None:
            extra = _extra_memory(c.memory)
            if c.returns_grad:  # the gradient it returns is not extra
                extra -= grad_bytes
            m.extra_memory[c.key] = extra


def measure_linear(
    n: int,
    d: int,
    v: int,
    *,
    dtype: str = "float32",
    epsilon: float = 0.1,
    rounds: int = 7,
    min_sample_seconds: float = MIN_SAMPLE_SECONDS,
    memory: bool = True,
    progress: TextIO | None = None,
) -> Measurement:
    """Time the linear head on ``n`` rows of ``d`` features and ``v`` classes.

    Candidates (one thread): :func:`smoothce.linear_cross_entropy_with_grad`, which
    never builds the (n, v) logits; the unfused head (``hidden @ classifier.T + bias``,
    :func:`smoothce.cross_entropy_with_grad` in place, then the two products and the
    bias sum); and the three matrix products alone, the least any exact method does.
    The Measurement's shape is ``(n, v)`` and its "logits" the (n, v) array the
    unfused head allocates.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1; got rounds={rounds}.")
    from ._linear import linear_cross_entropy_with_grad

    rng = np.random.default_rng(0)
    draw = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    h = rng.standard_normal((n, d), dtype=draw).astype(dtype, copy=False)
    w = (rng.standard_normal((v, d), dtype=draw) * d**-0.5).astype(dtype, copy=False)
    b = np.zeros(v, dtype=dtype)
    y = rng.integers(0, v, size=n)
    m = Measurement((n, v), np.dtype(dtype).name, epsilon, n * v * np.dtype(dtype).itemsize)
    m.rounds = rounds

    def fused() -> Any:
        return linear_cross_entropy_with_grad(h, w, y, epsilon, bias=b, workers=1)

    def unfused() -> Any:
        z = h @ w.T
        z += b
        loss, g = cross_entropy_with_grad(z, y, epsilon, workers=1, out=z)
        return loss, g @ w, g.T @ h, g.sum(axis=0)

    def products() -> Any:
        z = h @ w.T
        return z @ w, z.T @ h

    cands = [
        Candidate("linear fused", "smoothce linear, fused", "smoothce", 1, fused, memory=fused),
        Candidate("linear unfused", "logits, loss, products", "naive", 1, unfused, memory=unfused),
        Candidate("linear products", "the 3 matrix products", "floor", 1, products),
    ]

    def show(r: int) -> None:
        print(f"\r  linear {n} x {d} x {v} {m.dtype}: round {r + 1}/{rounds}", end="",
              file=progress, flush=True)  # fmt: skip

    with _blas_on_one_thread() as m.blas:
        samples, numbers = _run_rounds(
            cands, lambda c: None, rounds, min_sample_seconds, show if progress else None
        )
    if progress is not None:
        print(file=progress)
    _record(m, cands, samples, numbers, None if not memory else 0)
    return m


def _ms(t: float) -> str:
    return f"{t * 1e3:.4f}" if t < 1e-3 else f"{t * 1e3:.3f}"


def print_legend(out: TextIO, *, sweep: bool = False) -> None:
    """Explain the candidates and the columns."""
    print("Candidates (all on the same arrays; T threads = smoothce workers=T, "
          "torch.set_num_threads(T)):", file=out)  # fmt: skip
    for name, text in LEGEND:
        print(f"  {name:18s} {text}", file=out)
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
    pairs += [(kind, "smoothce fwd+grad w1") for kind in LM_OPTIONS]
    pairs += [("linear fused", "linear unfused"), ("linear fused", "linear products")]
    return [(a, b) for a, b in pairs if a in m.samples and b in m.samples]


def format_table(results: list[Measurement], out: TextIO) -> None:
    """Print, per shape, every candidate's median and spread, the verdicts and memory."""
    for m in results:
        n, k = m.shape
        print(
            f"\n({n}, {k}) {m.dtype}, epsilon={m.epsilon}, logits {_bytes(m.logits_bytes)}, "
            f"{m.rounds} sample(s) per candidate",
            file=out,
        )
        print(
            f"  {'candidate':28s} {'calls/sample':>12s} {'median ms':>10s} "
            f"{'q1-q3 ms':>19s} {'x floor':>15s}",
            file=out,
        )
        floor = m.spread.get("exp floor")
        for key, t in m.times.items():
            q1, q3 = m.spread[key]
            if floor is not None and floor[0] > 0:
                xf = f"{t / m.times['exp floor']:.1f} ({q1 / floor[1]:.1f}-{q3 / floor[0]:.1f})"
            else:
                xf = "-"
            print(
                f"  {m.labels[key]:28s} {m.calls_per_sample[key]:12d} {_ms(t):>10s} "
                f"{_ms(q1) + '-' + _ms(q3):>19s} {xf:>15s}",
                file=out,
            )
        for key, why in m.skipped.items():
            print(f"  {key}: not timed: {why}", file=out)
        pairs = comparisons(m)
        if pairs:
            print("  verdicts:", file=out)
        for a, b in pairs:
            print(f"  - {m.labels[a]} vs {m.labels[b]}: {m.verdict(a, b)}", file=out)
        if m.extra_memory:
            print(
                "  extra peak memory (NumPy allocations during one call, beyond a returned "
                "gradient):",
                file=out,
            )
        for key, extra in m.extra_memory.items():
            print(f"  - {m.labels[key]}: {memory_wording(extra, m.logits_bytes)}", file=out)


def _cell(m: Measurement | None, ours: str, theirs: str) -> str:
    if m is None:
        return "-"
    v = m.verdict(ours, theirs)
    if v is None:
        return "-"
    if v == "within noise":
        return "~"
    ratio, word = v.split(" ")[:2]
    return ratio if word == "faster" else f"{ratio} slower"


def format_sweep(results: list[Measurement], threads: int, out: TextIO) -> None:
    """Print the sweep's grids: smoothce's speed-up against naive NumPy and PyTorch."""
    by_shape = {m.shape: m for m in results}
    ns = sorted({s[0] for s in by_shape})
    ks = sorted({s[1] for s in by_shape})
    ours = f"smoothce fwd+grad w{threads}"
    tw = _thread_word(threads)
    for theirs, name in (
        ("naive fwd+grad", "naive fwd+grad"),
        (f"torch fwd+bwd t{threads}", f"torch fwd+bwd, {tw}"),
    ):
        print(f"\nsmoothce fwd+grad, {tw}, against {name}: how many times faster smoothce is",
              file=out)  # fmt: skip
        print('("1.8x slower" where it is slower, "~" within noise, "-" not timed)', file=out)
        corner = "N \\ K"
        print(f"  {corner:>7s}" + "".join(f"{k:>13d}" for k in ks), file=out)
        for n in ns:
            cells = "".join(f"{_cell(by_shape.get((n, k)), ours, theirs):>13s}" for k in ks)
            print(f"  {n:>7d}{cells}", file=out)
    skipped = [(m.shape, key, why) for m in results for key, why in m.skipped.items()]
    for shape, key, why in skipped:
        print(f"  {shape}: {key} not timed: {why}", file=out)
