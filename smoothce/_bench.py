"""Timing smoothce against the naive NumPy code, NumPy's exp and PyTorch.

Used by ``python -m smoothce bench`` (and the quick timing of ``python -m smoothce``).
The logits are drawn by :mod:`smoothce._bench_logits`, by distribution: standard
normals, wide, trained or offset logits, since a loss's speed may depend on them.
The method, chosen for shared machines whose timings swing by 2x from one moment to
the next:

* **Samples long enough to measure.** A sample times ``number`` calls back to back,
  with ``number`` chosen once per candidate (as :meth:`timeit.Timer.autorange` does,
  from a trial a quarter as long) so that a sample lasts at least
  :data:`MIN_SAMPLE_SECONDS`; the sample's value is its time divided by ``number``,
  the time per call.
* **Interleaved candidates.** A round takes one sample of every candidate, in an
  order rotated from round to round, so slow drifts of the machine hit all alike.
  The candidates of every distribution asked for are timed in the same rounds (when
  their arrays fit in memory together), so a distribution's cost is measured as
  fairly as a candidate's.
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
import dataclasses
import importlib
import math
import os
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from ._baselines import exp_floor, naive_loss, naive_loss_and_grad
from ._bench_logits import distribution, draw_linear_head, draw_logits, logit_stats
from ._loss import cross_entropy, cross_entropy_with_grad
from ._parallel import available_cores

__all__ = [
    "ALL_KINDS",
    "DEFAULT_LOGITS",
    "DEFAULT_ROUNDS",
    "DEFAULT_SHAPES",
    "MIN_SAMPLE_SECONDS",
    "SWEEP_K",
    "SWEEP_KINDS",
    "SWEEP_N",
    "Measurement",
    "Spread",
    "join_and",
    "load_average",
    "load_note",
    "measure",
    "measure_linear",
    "measure_linear_head",
    "measure_shape",
    "memory_wording",
    "size_text",
    "thread_word",
    "time_calls",
    "verdict",
]

#: The default run: the small calls of training loops and two large shapes, all
#: small enough that the naive code stays far below 1.5 GiB (larger ones by ``--shape``).
DEFAULT_SHAPES = [(32, 10), (256, 10), (1024, 100), (8192, 1000), (128, 32000)]
#: The logits of the default run: standard normals and a trained classifier's
#: (:mod:`smoothce._bench_logits`), timed in the same rounds.
DEFAULT_LOGITS = ("normal", "trained")
#: Rounds (samples per candidate) of ``python -m smoothce bench``: five keep the default
#: run (5 shapes, 11 candidates, 2 distributions) under 30 s on a 2-core machine.
DEFAULT_ROUNDS = 5
#: The ``--sweep`` grid: rows N, columns K.
SWEEP_N = (32, 256, 2048, 16384)
SWEEP_K = (10, 100, 1000, 32000)
#: Each sample times enough calls to last at least this long.
MIN_SAMPLE_SECONDS = 0.02

#: Peak memory of each kind of candidate in units of the logits' size (measured with
#: tracemalloc: the naive code holds five (N, K) arrays at once, PyTorch a copy of the
#: logits, their log-softmax and the gradient); used to skip what would not fit.
_MEMORY_FACTOR = {
    "exp floor": 1.0, "smoothce forward": 0.0, "smoothce fwd+grad": 1.0, "naive forward": 5.0,
    "naive fwd+grad": 5.0, "torch forward": 4.0, "torch fwd+bwd": 4.0,
    "smoothce z_loss": 1.0, "smoothce softcap": 2.0,
}  # fmt: skip

#: Arrays of the logits' size that a distribution's candidates keep while they are
#: timed: NumPy exp's buffer, the gradient, PyTorch's copy of the logits and its
#: gradient (shared by its candidates, counted once), each language-model option's.
_HELD = {
    "exp floor": 1.0, "smoothce fwd+grad": 1.0, "torch forward": 1.0, "torch fwd+bwd": 1.0,
    "smoothce z_loss": 1.0, "smoothce softcap": 1.0,
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


def size_text(b: float) -> str:
    """A size in bytes as B, KiB or MiB."""
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
    return f"{sign}{size_text(abs(extra))} ({of})"


def load_average() -> float | None:
    """The 1-minute load average, where the OS reports one."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def load_note(load: float | None, cores: int) -> str | None:
    """A warning when the load average ``load`` shows other processes on the cores.

    None when the machine looks quiet (load below half the cores) or there is no
    load average.

    >>> load_note(0.5, 2) is None
    True
    >>> load_note(2.5, 2).split(":")[1]
    ' load average 2.5 on 2 core(s) before starting'
    """
    if load is None or load < cores / 2:
        return None
    return (
        f"note: load average {load:.1f} on {cores} core(s) before starting: other "
        'processes compete for the CPU, so expect wide spreads and more "within noise"'
    )


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
    """Per-call times of every candidate on one shape and one distribution of logits.

    ``times`` holds the medians (seconds), ``spread`` the quartiles ``[q1, q3]`` and
    ``samples`` every sample; ``skipped`` says why a candidate was not timed.
    ``logits`` names the distribution (:mod:`smoothce._bench_logits`), ``logit_stats``
    describes the arrays drawn (:func:`~smoothce._bench_logits.logit_stats`), and
    ``timed_with`` lists the distributions whose candidates ran in the same rounds.
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
    logits: str = "normal"
    logit_stats: dict[str, float] = field(default_factory=dict)
    timed_with: list[str] = field(default_factory=list)
    linear_d: int | None = None  # the linear head's features, for --linear

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


def join_and(words: Sequence[str]) -> str:
    """Words as a list in prose.

    >>> join_and(["normal"]), join_and(["normal", "wide", "offset"])
    ('normal', 'normal, wide and offset')
    """
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def thread_word(t: int) -> str:
    """ "1 thread", "2 threads"."""
    return f"{t} thread" + ("" if t == 1 else "s")


#: Environment variables that set thread pools' sizes, reported with the threads.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _thread_pools(threadpoolctl: Any) -> str:
    """The native thread pools loaded in this process and their sizes, as text."""
    pools = [
        f"{info.get('prefix')} {info.get('version') or ''}".rstrip()
        + f" ({info.get('user_api')}): {thread_word(int(info.get('num_threads', 0)))}"
        for info in threadpoolctl.threadpool_info()
    ]
    return "; ".join(pools) or "no native thread pool loaded"


def _environment_threads() -> str:
    set_ = [f"{v}={os.environ[v]}" for v in _THREAD_VARIABLES if v in os.environ]
    return ", ".join(set_) if set_ else "none of " + ", ".join(_THREAD_VARIABLES) + " set"


@contextlib.contextmanager
def _blas_on_one_thread() -> Iterator[str]:
    """Hold NumPy's BLAS at one thread (threadpoolctl), and say what was done: the
    thread pools as they are while held, and the environment's thread variables."""
    try:
        threadpoolctl: Any = importlib.import_module("threadpoolctl")
    except ImportError:
        yield (
            "NumPy's BLAS threads as configured (threadpoolctl is not installed); "
            f"environment: {_environment_threads()}"
        )
        return
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        yield (
            f"NumPy's BLAS held at 1 thread (threadpoolctl); pools during the run: "
            f"{_thread_pools(threadpoolctl)}; environment: {_environment_threads()}"
        )


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
        out.append(Candidate("exp floor", "NumPy exp", "floor", 1, lambda: exp_floor(logits, buf)))
    if "smoothce fwd+grad" in kinds:
        grad = np.empty_like(logits)
        grad.fill(0.0)
    for w in threads:

        def forward(w: int = w) -> Any:
            return cross_entropy(logits, labels, epsilon, workers=w)

        def forward_grad(w: int = w) -> Any:
            return cross_entropy_with_grad(logits, labels, epsilon, workers=w, out=grad)

        tw = thread_word(w)
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
            tw = thread_word(t)
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
    """The number of back-to-back calls of ``fn`` that last at least ``min_seconds``.

    Estimated from a trial of a quarter of that, 20% past the target: a full-length
    trial for every candidate cost a quarter of a default run's time.
    """
    fn()  # warm-up: first-call costs (caches, page faults) are not a sample
    number = 1
    trial = min_seconds / 4
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return number
        if elapsed >= trial:
            return math.ceil(number * 1.2 * min_seconds / elapsed)
        # Aim 20% past the trial's length from this estimate, growing at most 100x a step.
        guess = math.ceil(number * 1.2 * trial / max(elapsed, 1e-9))
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


def time_calls(
    calls: Mapping[str, Callable[[], Any]],
    *,
    rounds: int = 7,
    min_sample_seconds: float = MIN_SAMPLE_SECONDS,
) -> dict[str, list[float]]:
    """Seconds per call of each callable: ``rounds`` interleaved, autoranged samples.

    The bench's method (module docstring) for scripts that build their own calls
    (``benchmarks/small_calls.py``, ``benchmarks/trained_mlp.py``); thread counts are
    the caller's to fix beforehand. ``Spread.of`` and :func:`verdict` read the result.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1; got rounds={rounds}.")
    cands = [Candidate(key, key, "call", 1, fn) for key, fn in calls.items()]
    samples, _ = _run_rounds(cands, lambda c: None, rounds, min_sample_seconds, None)
    return samples


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
#: What ``--sweep`` times on every shape of its grid (one thread): everything the
#: performance page shows, without the naive loss alone.
SWEEP_KINDS = ALL_KINDS - {"naive forward"}


def _names(logits: str | Iterable[str]) -> list[str]:
    names = [logits] if isinstance(logits, str) else list(dict.fromkeys(logits))
    if not names:
        raise ValueError("logits must name at least one distribution; got none.")
    for name in names:
        distribution(name)  # a clear error for an unknown name
    return names


def _progress_printer(
    progress: TextIO | None, what: str, rounds: int
) -> Callable[[int], None] | None:
    """Rewrites one line of ``progress`` (a terminal) round by round; None without one."""
    if progress is None:
        return None
    stream = progress

    def show(r: int) -> None:
        print(f"\r  {what}: round {r + 1}/{rounds}", end="", file=stream, flush=True)

    return show


def _measure_together(
    names: Sequence[str],
    build: Callable[[str, Measurement], list[Candidate]],
    new: Callable[[str], Measurement],
    set_threads: Callable[[Candidate], None],
    rounds: int,
    min_sample_seconds: float,
    memory: bool,
    progress: Callable[[int], None] | None,
) -> list[Measurement]:
    """Time the candidates of every distribution in ``names`` in the same rounds.

    ``new(name)`` makes a distribution's Measurement, ``build(name, m)`` its
    candidates (drawing its arrays); keys are prefixed by the distribution for the
    rounds and stored without it, one Measurement per distribution.
    """
    ms = [new(name) for name in names]
    cands: list[Candidate] = []
    own: dict[str, tuple[Measurement, Candidate]] = {}
    for name, m in zip(names, ms, strict=True):
        m.rounds, m.timed_with = rounds, list(names)
        for c in build(name, m):
            tagged = dataclasses.replace(c, key=f"{name}/{c.key}")
            cands.append(tagged)
            own[tagged.key] = (m, c)
    with _blas_on_one_thread() as blas:
        samples, numbers = _run_rounds(cands, set_threads, rounds, min_sample_seconds, progress)
    for key, (m, c) in own.items():
        m.blas = blas
        s = Spread.of(samples[key])
        m.times[c.key] = s.median
        m.spread[c.key] = [s.q1, s.q3]
        m.samples[c.key] = samples[key]
        m.calls_per_sample[c.key] = numbers[key]
        m.labels[c.key] = c.label
        if memory and c.memory is not None:
            extra = _extra_memory(c.memory)
            if c.returns_grad:  # the gradient it returns is not extra
                extra -= m.logits_bytes
            m.extra_memory[c.key] = extra
    return ms


def measure(
    shape: tuple[int, int],
    *,
    logits: str | Iterable[str] = "normal",
    dtype: str = "float32",
    epsilon: float = 0.1,
    workers: Iterable[int] | None = None,
    rounds: int = 7,
    kinds: Iterable[str] = ALL_KINDS,
    min_sample_seconds: float = MIN_SAMPLE_SECONDS,
    max_memory_bytes: float = math.inf,
    memory: bool = True,
    progress: TextIO | None = None,
) -> list[Measurement]:
    """Time every candidate on the same arrays of ``shape``, for each distribution.

    Parameters
    ----------
    shape : (int, int)
        ``(N, K)`` of the logits.
    logits : str or iterable of str
        The distributions (:data:`smoothce._bench_logits.NAMES`), each drawn with
        seed 0. Their candidates are timed in the same rounds, unless holding every
        distribution's arrays at once would skip a candidate that fits alone: then
        one distribution after another (``timed_with`` says which).
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
        Where to rewrite a line with the rounds' progress (a terminal).

    Returns
    -------
    list of Measurement
        One per distribution, in the order of ``logits``.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1; got rounds={rounds}.")
    names = _names(logits)
    n, k = shape
    kinds = set(kinds)
    nbytes = n * k * np.dtype(dtype).itemsize
    fits = {kind: (1 + _MEMORY_FACTOR[kind]) * nbytes <= max_memory_bytes for kind in kinds}
    # Timed together, every distribution's arrays are held at once: the logits and the
    # buffers its candidates keep, besides the largest transient of one call.
    timed = [kind for kind in kinds if fits[kind]]
    held = 1 + sum(_HELD.get(kind, 0.0) for kind in timed)
    peak = max((_MEMORY_FACTOR[kind] for kind in timed), default=0.0)
    together = (len(names) * held + peak) * nbytes <= max_memory_bytes
    skipped = {
        kind: f"would need about {(1 + _MEMORY_FACTOR[kind]) * nbytes / 2**30:.1f} GiB, over "
        f"the limit of {max_memory_bytes / 2**30:.1f} GiB (--max-memory)"
        for kind in sorted(kinds)
        if not fits[kind]
    }
    kinds = {kind for kind in kinds if fits[kind]}
    torch = _import_torch() if kinds & {"torch forward", "torch fwd+bwd"} else None
    threads = sorted(set(workers)) if workers is not None else sorted({1, available_cores()})
    dt = np.dtype(dtype).name

    def new(name: str) -> Measurement:
        m = Measurement((n, k), dt, epsilon, nbytes, logits=name, skipped=dict(skipped))
        if torch is None and kinds & {"torch forward", "torch fwd+bwd"}:
            m.skipped["torch"] = "PyTorch is not installed"
        return m

    def build(name: str, m: Measurement) -> list[Candidate]:
        z, y = draw_logits(name, (n, k), dtype)
        m.logit_stats = logit_stats(z, y)
        return _candidates(z, y, epsilon, threads, kinds, torch)

    def set_threads(c: Candidate) -> None:
        if c.kind == "torch" and torch is not None:
            torch.set_num_threads(c.threads)

    groups = [names] if together else [[name] for name in names]
    results: list[Measurement] = []
    for group in groups:
        show = _progress_printer(progress, f"{n} x {k} {dt}, {join_and(group)} logits", rounds)
        results += _measure_together(
            group, build, new, set_threads, rounds, min_sample_seconds, memory, show
        )
        if progress is not None:
            print(file=progress)
    return results


def measure_shape(
    shape: tuple[int, int], *, logits: str = "normal", **options: Any
) -> Measurement:
    """:func:`measure` on one distribution (default: standard normals)."""
    (m,) = measure(shape, logits=logits, **options)
    return m


def measure_linear_head(
    n: int,
    d: int,
    v: int,
    *,
    logits: str | Iterable[str] = "normal",
    dtype: str = "float32",
    epsilon: float = 0.1,
    rounds: int = 7,
    min_sample_seconds: float = MIN_SAMPLE_SECONDS,
    memory: bool = True,
    progress: TextIO | None = None,
) -> list[Measurement]:
    """Time the linear head on ``n`` rows of ``d`` features and ``v`` classes.

    Candidates (one smoothce worker; NumPy's BLAS held at one thread, as every
    candidate here): :func:`smoothce.linear_cross_entropy_with_grad`, which never
    builds the (n, v) logits; the unfused head (``hidden @ classifier.T + bias``,
    :func:`smoothce.cross_entropy_with_grad` in place, then the two products and the
    bias sum); and the three matrix products alone. With :mod:`threadpoolctl` and
    more than one core, the fused head as a user calls it (default ``workers``: the
    engine on one thread between the products) and the unfused head again with BLAS
    on every core, so that the bench shows what threading the products does to each
    (the limit is set inside the timed call: under a millisecond, against seconds of
    products). The head's arrays come from
    :func:`smoothce._bench_logits.draw_linear_head`: the classifier scaled so that
    the logits have each distribution's spread. Each Measurement's shape is ``(n, v)``
    and its "logits" the (n, v) array the unfused head allocates; ``logit_stats``
    describes the logits of its first rows, and ``blas`` the thread pools.

    Returns
    -------
    list of Measurement
        One per distribution, timed in the same rounds.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1; got rounds={rounds}.")
    from ._linear import linear_cross_entropy_with_grad

    names = _names(logits)
    dt = np.dtype(dtype).name
    nbytes = n * v * np.dtype(dtype).itemsize
    cores = available_cores()
    controller: Any = None
    # One controller: it finds the loaded BLAS libraries once, not in every call.
    with contextlib.suppress(ImportError):
        controller = importlib.import_module("threadpoolctl").ThreadpoolController()

    def new(name: str) -> Measurement:
        return Measurement((n, v), dt, epsilon, nbytes, logits=name, linear_d=d)

    def build(name: str, m: Measurement) -> list[Candidate]:
        h, w, b, y = draw_linear_head(name, n, d, v, dtype)
        rows = min(n, 256)
        m.logit_stats = logit_stats(h[:rows] @ w.T + b, y[:rows])

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

        candidates = [
            Candidate("linear fused", "smoothce linear, fused", "smoothce", 1, fused,
                      memory=fused),
            Candidate("linear unfused", "logits, loss, products", "naive", 1, unfused,
                      memory=unfused),
            Candidate("linear products", "the 3 matrix products", "floor", 1, products),
        ]  # fmt: skip
        if controller is None or cores < 2:
            return candidates

        def fused_blas() -> Any:
            with controller.limit(limits=cores, user_api="blas"):
                return linear_cross_entropy_with_grad(h, w, y, epsilon, bias=b)

        def unfused_blas() -> Any:
            with controller.limit(limits=cores, user_api="blas"):
                return unfused()

        threads = f"BLAS on {thread_word(cores)}"
        return [
            *candidates,
            Candidate("linear fused blas", f"fused, {threads}", "smoothce", cores, fused_blas),
            Candidate("linear unfused blas", f"unfused, {threads}", "naive", cores,
                      unfused_blas),
        ]  # fmt: skip

    show = _progress_printer(
        progress, f"linear {n} x {d} x {v} {dt}, {join_and(names)} logits", rounds
    )
    results = _measure_together(
        names, build, new, lambda c: None, rounds, min_sample_seconds, memory, show
    )
    if progress is not None:
        print(file=progress)
    return results


def measure_linear(
    n: int, d: int, v: int, *, logits: str = "normal", **options: Any
) -> Measurement:
    """:func:`measure_linear_head` on one distribution (default: standard normals)."""
    (m,) = measure_linear_head(n, d, v, logits=logits, **options)
    return m
