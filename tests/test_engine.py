"""The engine's own guarantees: workers give identical bits, streamed rows equal whole
rows, the unshifted fast path stays within its proven error, memmaps stream."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cases import case_id, combinations, make_case
from reference import reference

import smoothce
from smoothce import _engine
from smoothce._stable import fast_exp_bounds

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

    monkeypatch.setattr(_engine, "_exp_and_dot", broken)
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


# -- the unshifted fast path --------------------------------------------------------------
def _count_shifted(monkeypatch):
    calls = []
    real = _engine._shifted

    def counting(z2, *args, **kwargs):
        calls.append(z2.shape[0])
        return real(z2, *args, **kwargs)

    monkeypatch.setattr(_engine, "_shifted", counting)
    return calls


@pytest.mark.parametrize("K", [2, 10, 1000])
def test_fast_path_holds_its_bound_at_the_edge_of_its_range(K, monkeypatch):
    """Rows whose log-sum-exp sits just inside +-L: the fast path is used (no shift)
    and the float32 loss stays within 1e-6 of the float64 truth even at epsilon = 1,
    where the uniform term, the one the shift protects, is all of the loss."""
    lo, hi = fast_exp_bounds(K)
    L = np.log(hi)
    rng = np.random.default_rng(K)
    # Nearly constant rows have log S ~ c + ln K: aim log S at points across (-L, L).
    centres = np.array([-L, -L / 2, 0.0, L / 2, L]) * 0.97 - np.log(K)
    z = (centres[:, None] + 0.05 * rng.standard_normal((5, K))).astype(np.float32)
    S = np.exp(z.astype(np.float64)).sum(axis=1)
    assert np.all((lo <= S) & (S <= hi)), "the test rows must lie inside the fast range"
    y = rng.integers(0, K, size=5)
    calls = _count_shifted(monkeypatch)
    for eps in (1.0, 0.1):
        got = smoothce.cross_entropy(z, y, eps, reduction="none")
        truth, _ = reference(z.astype(np.float64), y, eps, reduction="none")
        np.testing.assert_allclose(got.astype(np.float64), truth, rtol=1e-6)
    assert calls == [], "rows inside the range must not be shifted"


def test_rows_outside_the_fast_range_are_shifted_and_exact(monkeypatch):
    rng = np.random.default_rng(5)
    z = rng.standard_normal((6, 50)).astype(np.float32)
    z[1] += 80.0  # exp overflows float32 without the shift
    z[3] -= 120.0  # the largest term underflows without the shift
    z[4, 7] = 3e4
    y = rng.integers(0, 50, size=6)
    calls = _count_shifted(monkeypatch)
    loss, grad = smoothce.cross_entropy_with_grad(z, y, 0.2, reduction="none")
    assert calls == [3]  # exactly the three extreme rows, redone together
    truth, grad_truth = reference(z.astype(np.float64), y, 0.2, reduction="none")
    np.testing.assert_allclose(loss.astype(np.float64), truth, rtol=1e-6)
    np.testing.assert_allclose(grad, grad_truth, rtol=1e-5, atol=1e-7)


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
