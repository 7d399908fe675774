"""The engine's own guarantees: workers give identical bits, streamed rows equal whole
rows, every row is exponentiated once whatever its values, a row's bits depend on that
row alone, the unshifted window holds its error at its edges, memmaps stream."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases import case_id, combinations, make_case
from reference import reference

import smoothce
from smoothce import _engine, _kernel

COMBOS = combinations(epsilons=(0.0, 0.3, 1.0))


# -- workers --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((3000, 100), np.float32), ((700, 2000), np.float64), ((2, 300_000), np.float32)],
)
def test_every_workers_value_gives_identical_bits(shape, dtype):
    rng = np.random.default_rng(0)
    z = rng.standard_normal(shape).astype(dtype)
    y = rng.integers(0, shape[1], size=shape[0])
    results = {w: smoothce.cross_entropy_with_grad(z, y, 0.1, workers=w) for w in (1, 2, 3, 4, -1)}
    ref_loss, ref_grad = results[1]
    for loss, grad in results.values():
        assert loss.tobytes() == ref_loss.tobytes()
        assert grad.tobytes() == ref_grad.tobytes()
    none = [smoothce.cross_entropy(z, y, 0.1, reduction="none", workers=w) for w in (1, 2, 3)]
    assert none[0].tobytes() == none[1].tobytes() == none[2].tobytes()


@pytest.mark.parametrize(
    ("workers", "exc", "match"),
    [
        (0, ValueError, r"workers must be a positive thread count .*got workers=0"),
        (-10_000, ValueError, r"got workers=-10000"),
        (1.5, TypeError, r"workers must be an integer or None; got workers=1\.5"),
        (True, TypeError, r"got workers=True"),
    ],
)
def test_bad_workers(workers, exc, match):
    with pytest.raises(exc, match=match):
        smoothce.cross_entropy(np.zeros((2, 3)), [0, 1], workers=workers)


def test_an_error_in_a_worker_reaches_the_caller(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(_kernel, "_exponentials", broken)
    z = np.zeros((5000, 300), dtype=np.float32)
    with pytest.raises(RuntimeError, match="boom"):
        smoothce.cross_entropy(z, np.zeros(5000, int), workers=2)


# -- streamed rows: classes in chunks, combined by online log-sum-exp -------------------
@pytest.mark.parametrize("combo", COMBOS, ids=[case_id(c) for c in COMBOS])
def test_streamed_rows_match_the_reference(combo, monkeypatch):
    """A block of 3 elements cuts K = 7 classes into windows [0,3), [3,6), [6,7)."""
    monkeypatch.setattr(_engine, "BLOCK_ELEMENTS", 3)
    logits, labels, eps, kw = make_case(combo, seed=11, N=4, K=7)
    loss, grad = smoothce.cross_entropy_with_grad(logits, labels, eps, **kw)
    ref_loss, ref_grad = reference(logits, labels, eps, **kw)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(grad, smoothce.cross_entropy_grad(logits, labels, eps, **kw))


def test_streamed_rows_with_masked_and_poisoned_chunks(monkeypatch):
    monkeypatch.setattr(_engine, "BLOCK_ELEMENTS", 2)
    inf = np.inf
    z = np.array(
        [
            [-inf, -inf, 0.5, 1.0, -2.0],  # a whole chunk masked, no target mass there
            [0.5, 1.0, -inf, -inf, 3.0],  # the label's chunk is masked: +inf
            [0.5, np.nan, 1.0, 2.0, 0.0],  # NaN in one chunk poisons the row
            [-inf, -inf, -inf, -inf, -inf],  # nothing left: NaN
        ]
    )
    y = np.array([2, 3, 0, 0])
    loss, grad = smoothce.cross_entropy_with_grad(z, y, 0.0, reduction="none")
    ref, ref_grad = reference(z[:1], y[:1], 0.0, reduction="none")
    np.testing.assert_allclose(loss[0], ref[0], rtol=1e-14)
    np.testing.assert_allclose(grad[0], ref_grad[0], rtol=1e-14)
    assert loss[1] == np.inf
    assert np.isnan(loss[2])
    assert np.isnan(loss[3])
    assert np.isnan(grad[2]).all()


def test_one_row_of_ten_million_classes_streams():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((1, 10_000_000), dtype=np.float32)
    y = np.array([1234567])
    loss = smoothce.cross_entropy(z, y, 0.1)
    truth, _ = reference(z.astype(np.float64), y, 0.1)
    np.testing.assert_allclose(float(loss), truth, rtol=1e-6)


# -- one exponential per logit, whatever the values ----------------------------------
def _distributions(rng, N, K, dtype):
    y = rng.integers(0, K, N)
    normal = rng.standard_normal((N, K))
    trained = 3 * normal
    trained[np.arange(N), y] += 10
    rows = {
        "normal": normal,
        "wide": 5 * normal,
        "trained": trained,
        "offset": normal + 50,
        "offset -70": normal - 70,
        "spread 1e4": 1e4 * normal,
        "a huge logit": np.where(normal > 2, 3e4, normal),
        "very negative": normal - 300,
        "masked": np.where(normal < -1, -np.inf, normal),
    }
    mixed = np.concatenate([v[: max(1, N // len(rows))] for v in rows.values()])[:N]
    rows["every kind in one block"] = np.resize(mixed, (N, K))
    return {k: v.astype(dtype) for k, v in rows.items()}, y


class _ExpCounter:
    """Stands in for NumPy inside the block kernel; counts the elements ``np.exp``
    writes into a workspace (``out=``): the exponentials of logits, every pass of every
    path. (Merging streamed windows exponentiates one number per window, not logits.)"""

    def __init__(self):
        self.elements = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def exp(self, x, *args, **kwargs):
        if "out" in kwargs:
            self.elements += np.size(x)
        return np.exp(x, *args, **kwargs)


OPTIONS = [
    {},
    {"weight": "w", "ignore_index": 2},
    {"prior": "others"},
    {"z_loss": 1e-3},
    {"softcap": 30.0},
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, "bfloat16"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("shape", [(64, 10), (3000, 100)], ids=["lean", "blocks"])
def test_no_row_is_exponentiated_twice_whatever_its_values(dtype, options, shape, monkeypatch):
    """The float32 fast path used to exponentiate rows a second time (gathered,
    shifted, scattered back) whenever their sum left a narrow range: a trained
    network's confident rows, a spread of 5, an offset of +50. Every logit is now
    exponentiated exactly once per pass, for every value, on the lean and the general
    path (plus once more for softcap's derivative, which is its own exponential)."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    rng = np.random.default_rng(0)
    N, K = shape
    cases, y = _distributions(rng, N, K, dtype)
    kw = dict(options)
    if kw.get("weight") == "w":
        kw["weight"] = rng.uniform(0.5, 2, K)
    counter = _ExpCounter()
    monkeypatch.setattr(_kernel, "np", counter)
    for name, z in cases.items():
        for fn, passes in ((smoothce.cross_entropy, 1), (smoothce.cross_entropy_with_grad, 1)):
            if fn is smoothce.cross_entropy_with_grad and "softcap" in kw:
                passes = 2  # the chain rule's exp(-2 |z| / softcap)
            counter.elements = 0
            fn(z, y, 0.1, **kw)
            assert counter.elements == passes * N * K, (name, fn.__name__)


def test_streamed_rows_take_two_passes_for_the_gradient_by_their_length(monkeypatch):
    # The one place a logit is exponentiated twice: a row longer than a block needs its
    # whole log-sum-exp before its gradient. That depends on K, never on the values.
    monkeypatch.setattr(_engine, "BLOCK_ELEMENTS", 16)
    rng = np.random.default_rng(1)
    cases, y = _distributions(rng, 6, 40, np.float32)
    counter = _ExpCounter()
    monkeypatch.setattr(_kernel, "np", counter)
    for z in cases.values():
        counter.elements = 0
        smoothce.cross_entropy(z, y, 0.1)
        assert counter.elements == z.size
        counter.elements = 0
        smoothce.cross_entropy_with_grad(z, y, 0.1)
        assert counter.elements == 2 * z.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_rows_bits_do_not_depend_on_the_rows_beside_it(dtype):
    # Each row chooses its own reference (0, or its maximum) from its own values, so a
    # row gives the same loss and gradient alone, in any order, and beside rows that
    # need a shift; this is what keeps Dask's chunkings and the metrics' chunks equal
    # to the bit.
    rng = np.random.default_rng(2)
    cases, y = _distributions(rng, 40, 12, dtype)
    z = np.concatenate(list(cases.values()))
    yy = np.resize(y, len(z))
    loss, grad = smoothce.cross_entropy_with_grad(z, yy, 0.1, reduction="none")
    order = rng.permutation(len(z))
    loss_p, grad_p = smoothce.cross_entropy_with_grad(z[order], yy[order], 0.1, reduction="none")
    np.testing.assert_array_equal(loss_p, loss[order])
    np.testing.assert_array_equal(grad_p, grad[order])
    for i in rng.choice(len(z), 25, replace=False):
        li, gi = smoothce.cross_entropy_with_grad(
            z[i : i + 1], yy[i : i + 1], 0.1, reduction="none"
        )
        assert li.tobytes() == loss[i : i + 1].tobytes()
        assert gi.tobytes() == grad[i : i + 1].tobytes()


def test_the_reference_rule_at_the_edges_of_the_window():
    lo, hi = _kernel.UNSHIFTED
    f32 = np.float32
    z = np.array(
        [
            [hi, 0.0, -1.0],  # maximum at the top of the window: unshifted
            [np.nextafter(f32(hi), f32(100)), 0.0, -1.0],  # just above: shifted
            [-0.5, -1.0, lo],  # negative maximum, every logit >= lo: unshifted
            [-0.5, -1.0, np.nextafter(f32(lo), f32(-100))],  # one below lo: shifted
            [0.0, -1.0, -1e30],  # maximum 0 (>= 0): unshifted whatever the minimum
        ],
        dtype=f32,
    )
    ref, inside = _kernel.reference(z)
    assert not inside
    np.testing.assert_array_equal(ref, [0.0, z[1, 0], 0.0, -0.5, 0.0])
    ref, inside = _kernel.reference(z[[0, 2]])
    assert ref is None
    assert inside
    assert _kernel.reference(z.astype(np.float64))[0] is not None  # float64: shifted


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_rows_at_the_edges_of_the_window_hold_the_contract(eps):
    """Rows just inside and just outside the unshifted window, against the float64
    oracle with the contract's tolerance: (K + 4) u M for the loss, M the size of
    the terms that cancel (as tests/test_oracle.py derives it)."""
    lo, hi = _kernel.UNSHIFTED
    rng = np.random.default_rng(7)
    K = 50
    base = rng.standard_normal((8, K))
    tops = [hi - 0.01, hi + 0.01, -0.01, lo + 6.0, lo - 0.01, 0.0]
    z = np.concatenate([base - base.max(axis=1, keepdims=True) + t for t in tops])
    z = z.astype(np.float32)
    z64 = z.astype(np.float64)
    y = rng.integers(0, K, len(z))
    loss, grad = smoothce.cross_entropy_with_grad(z, y, eps, reduction="none")
    ref_loss, ref_grad = reference(z64, y, eps, reduction="none")
    u = 2.0**-24
    mx = z64.max(axis=1)
    lse = mx + np.log(np.exp(z64 - mx[:, None]).sum(axis=1))
    M = np.abs(lse) + np.abs(mx) + 1.0 + np.abs(z64).max(axis=1)
    np.testing.assert_array_less(np.abs(loss - ref_loss), (K + 4) * u * M)
    p = np.exp(z64 - lse[:, None])
    gscale = p * (np.abs(z64 - mx[:, None]) + K + 4) + 2 * np.abs(ref_grad - p)
    assert np.all(np.abs(grad - ref_grad) <= (K + 4) * u * gscale + 1e-45)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_row_whose_softmax_is_one_hot_costs_exactly_zero(dtype):
    # semantics.rst promises 0 for such rows; unshifted float32 gave
    # log(fl(e^1.3)) - 1.3 = 2.8e-9 for [[1.3]] and 1.7e-9 for [[3, -1e4]]. The label
    # term now reads log e_y from the same exponential that S sums.
    rows = [([[1.3]], [0]), ([[3.0, -1e4]], [0]), ([[20.0, -80.0, -90.0]], [0])]
    for z, y in rows:
        z = np.array(z, dtype=dtype)
        loss = smoothce.cross_entropy(z, y, reduction="none")
        assert loss[0] == 0.0, (z, loss)
        h = np.ones((1, 1), dtype=dtype)
        head = smoothce.linear_cross_entropy(h, z.reshape(-1, 1), y, reduction="none")
        assert head[0] == 0.0
        assert smoothce.metrics.nll(z, y) == 0.0


# -- larger than memory -------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, Linux only")
def test_memmap_logits_stream_under_an_address_space_limit(tmp_path):
    """A 256 MiB logits file is mapped, then the process's address space is limited
    (RLIMIT_AS) to what it already uses plus 64 MiB, a quarter of the file: any
    O(N*K) temporary would fail with MemoryError; the loss must come out right."""
    resource = pytest.importorskip("resource")
    del resource
    N, K = 65_536, 1_024
    path = tmp_path / "logits.f32"
    rng = np.random.default_rng(6)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(N, K))
    for r0 in range(0, N, 8192):
        mm[r0 : r0 + 8192] = rng.standard_normal((8192, K), dtype=np.float32)
    mm.flush()
    del mm
    labels = rng.integers(0, K, size=N)
    np.save(tmp_path / "labels.npy", labels)
    script = textwrap.dedent(
        f"""
        import resource, numpy as np, smoothce
        z = np.load({str(path)!r}, mmap_mode="r")
        y = np.load({str(tmp_path / "labels.npy")!r})
        smoothce.cross_entropy(z[:2], y[:2])  # warm up imports and caches
        with open("/proc/self/status") as f:
            vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))
        budget = 64 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (vm + budget, vm + budget))
        try:
            np.ones(z.shape, dtype=np.float32)  # the limit bites on a full temporary
            raise SystemExit("the limit did not bite")
        except MemoryError:
            pass
        loss = smoothce.cross_entropy(z, y, 0.1, workers=1)
        print(repr(float(loss)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=300
    )
    assert out.returncode == 0, out.stderr
    z = np.load(path, mmap_mode="r")
    expected = np.mean(
        [
            reference(z[r0 : r0 + 4096].astype(np.float64), labels[r0 : r0 + 4096], 0.1)[0]
            for r0 in range(0, N, 4096)
        ]
    )
    np.testing.assert_allclose(float(out.stdout), expected, rtol=1e-6)


def test_a_small_call_allocates_a_workspace_of_its_own_size():
    # The workspace was a whole 2**17-element block (512 KiB in float32) for every
    # call, 400x the logits at (32, 10).
    import tracemalloc

    z = np.zeros((32, 10), np.float32)
    y = np.zeros(32, np.intp)
    w = np.ones(10)  # class weights: the general path
    smoothce.cross_entropy(z, y, 0.1, weight=w)
    tracemalloc.start()
    try:
        smoothce.cross_entropy(z, y, 0.1, weight=w)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024
