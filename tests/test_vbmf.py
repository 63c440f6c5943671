"""EVBMF rank estimation (Nakajima et al., JMLR 2013) against independent references.

The references here are written separately from the module: the EVB threshold
gamma_EVB = sigma sqrt(M + L + sqrt(LM)(kappa + 1/kappa)) with kappa solved by bisection
on Phi(sqrt(alpha) kappa) + Phi(kappa / sqrt(alpha)) = 0, Phi(z) = log(1+z)/z - 1/2;
the EVB noise-variance stationarity condition sigma^2 = (||Y||^2 - sum gamma gamma^EVB)
/ (LM); synthetic matrices of known rank and noise.
"""

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfcompress.decomposition import vbmf as vbmf_module
from tfcompress.decomposition.vbmf import evbmf, evbmf_rank


def _low_rank_plus_noise(length, width, rank, sigma, seed, strength=(4.0, 8.0)):
    """U diag(s) V^T + N(0, sigma^2) noise; s spread over strength x sigma sqrt(max)."""
    gen = np.random.default_rng(seed)
    u, _ = np.linalg.qr(gen.normal(size=(length, rank)))
    v, _ = np.linalg.qr(gen.normal(size=(width, rank)))
    s = sigma * math.sqrt(max(length, width)) * np.linspace(*strength, rank)
    return (u * s) @ v.T + sigma * gen.normal(size=(length, width))


def _kappa(alpha):
    """Zero-cross of the decreasing Xi(k) = Phi(sqrt(a) k) + Phi(k / sqrt(a))."""

    def phi(z):
        return math.log(1.0 + z) / z - 0.5

    def xi(k):
        return phi(math.sqrt(alpha) * k) + phi(k / math.sqrt(alpha))

    lo, hi = 1e-6, 1.0
    while xi(hi) > 0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if xi(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def _evb_threshold(length, width, sigma2):
    """gamma_EVB = sigma sqrt(M + L + sqrt(LM)(kappa + 1/kappa)), L <= M."""
    small, big = sorted((length, width))
    k = _kappa(small / big)
    return math.sqrt(sigma2 * (big + small + math.sqrt(small * big) * (k + 1.0 / k)))


def test_kappa_reference_matches_the_paper_constant():
    # For L = M the threshold constant is tau_bar = kappa = 2.5129 (the paper's value).
    assert _kappa(1.0) == pytest.approx(2.5129, abs=1e-4)


@pytest.mark.parametrize(
    "length, width, rank, sigma, seed",
    [
        (40, 60, 3, 0.1, 0),
        (30, 50, 5, 1.0, 1),
        (64, 96, 10, 0.5, 2),
        (20, 100, 4, 0.3, 3),
        (100, 30, 6, 2.0, 4),
        (50, 50, 8, 1.0, 5),
        (128, 576, 12, 0.05, 6),
    ],
)
def test_synthetic_low_rank_recovers_rank_and_noise(length, width, rank, sigma, seed):
    y = _low_rank_plus_noise(length, width, rank, sigma, seed)
    assert evbmf_rank(y) == rank
    out = evbmf(y)
    assert out["rank"] == rank
    assert out["sigma2"] == pytest.approx(sigma**2, rel=0.2)


@pytest.mark.parametrize("shape", [(30, 60), (50, 50), (20, 200), (80, 40)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_noise_gives_rank_zero(shape, seed):
    # The EVB threshold lies above the Marchenko-Pastur edge sigma (sqrt(M) + sqrt(L))
    # (for L = M: 2.216 vs 2 times sigma sqrt(M)), so pure noise keeps no component.
    y = 0.7 * np.random.default_rng(100 + seed).normal(size=shape)
    out = evbmf(y)
    assert out["rank"] == 0
    assert out["singular_values"].shape == (0,)
    # Rank 0: the estimate is the upper end, ||Y||^2 / (LM).
    assert out["sigma2"] == pytest.approx(np.mean(y**2), rel=1e-9)
    assert out["sigma2"] == pytest.approx(0.49, rel=0.1)


@pytest.mark.parametrize("sigma2", [None, 0.25])
def test_vb_singular_values_are_shrunk(sigma2):
    y = _low_rank_plus_noise(40, 70, 6, 0.5, 7, strength=(2.5, 9.0))
    gamma = np.linalg.svd(y, compute_uv=False)
    out = evbmf(y, sigma2=sigma2)
    values = out["singular_values"]
    assert out["rank"] == len(values) > 0
    assert np.all(values > 0)
    assert np.all(values < gamma[: len(values)])
    assert np.all(np.diff(values) <= 0)  # descending


def test_fixed_sigma2_rank_counts_singular_values_above_threshold():
    # Signal strengths straddle the threshold so that the count is not trivial.
    for length, width, sigma, seed in [(40, 80, 0.5, 8), (60, 60, 1.0, 9), (90, 30, 0.2, 10)]:
        y = _low_rank_plus_noise(length, width, 10, sigma, seed, strength=(0.5, 4.0))
        gamma = np.linalg.svd(y, compute_uv=False)
        threshold = _evb_threshold(length, width, sigma**2)
        expected = int(np.sum(gamma > threshold))
        assert 0 < expected < 10
        out = evbmf(y, sigma2=sigma**2)
        assert out["rank"] == expected
        assert out["sigma2"] == sigma**2


def test_estimated_sigma2_is_a_stationary_point():
    # dF/dsigma^2 = 0 gives sigma^2 = (||Y||^2 - sum_h gamma_h gamma_h^EVB) / (LM).
    for length, width, rank, seed in [(40, 60, 4, 11), (70, 35, 7, 12)]:
        y = _low_rank_plus_noise(length, width, rank, 0.3, seed)
        gamma = np.linalg.svd(y, compute_uv=False)
        out = evbmf(y)
        r = out["rank"]
        fixed_point = (np.sum(y**2) - np.sum(gamma[:r] * out["singular_values"])) / y.size
        assert out["sigma2"] == pytest.approx(fixed_point, rel=1e-6)


def test_transpose_invariance():
    for seed, (length, width, rank) in enumerate([(30, 70, 4), (64, 64, 6), (25, 40, 2)]):
        y = _low_rank_plus_noise(length, width, rank, 1.0, 20 + seed, strength=(1.5, 6.0))
        assert evbmf_rank(y) == evbmf_rank(y.T)
        a, b = evbmf(y), evbmf(y.T)
        assert a["sigma2"] == pytest.approx(b["sigma2"], rel=1e-9)
        np.testing.assert_allclose(a["singular_values"], b["singular_values"], rtol=1e-9)


def test_scale_equivariance():
    y = _low_rank_plus_noise(30, 50, 3, 1.0, 30)
    a, b = evbmf(y), evbmf(1e-4 * y)
    assert a["rank"] == b["rank"] == 3
    assert b["sigma2"] == pytest.approx(1e-8 * a["sigma2"], rel=1e-6)


def test_h_caps_the_rank():
    y = _low_rank_plus_noise(40, 60, 6, 0.2, 31)
    assert evbmf(y)["rank"] == 6
    capped = evbmf(y, h=3)
    assert capped["rank"] == 3
    assert len(capped["singular_values"]) == 3
    assert evbmf(y, h=1000)["rank"] == 6  # above min(L, M): no cap


def test_rank_bound_and_degenerate_inputs():
    gen = np.random.default_rng(32)
    # L = 1: the EVB rank bound ceil(L / (1 + alpha)) - 1 is 0.
    assert evbmf_rank(gen.normal(size=(1, 50)) * 10.0) == 0
    zero = evbmf(np.zeros((5, 7)))
    assert zero["rank"] == 0 and zero["sigma2"] == 0.0
    # An exactly low-rank matrix (no noise) still gives its rank.
    exact = gen.normal(size=(30, 2)) @ gen.normal(size=(2, 40))
    assert evbmf_rank(exact) == 2


def test_golden_section_fallback_without_scipy(monkeypatch):
    y = _low_rank_plus_noise(40, 60, 5, 0.5, 33)
    with_scipy = evbmf(y)
    monkeypatch.setattr(vbmf_module, "_minimize_scalar", None)
    without = evbmf(y)
    assert without["rank"] == with_scipy["rank"] == 5
    assert without["sigma2"] == pytest.approx(with_scipy["sigma2"], rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"y": np.ones(5)}, "got shape (5,)"),
        ({"y": np.ones((2, 3, 4))}, "got shape (2, 3, 4)"),
        ({"y": np.ones((0, 4))}, "got shape (0, 4)"),
        ({"y": np.array([[1.0, np.nan], [0.0, 1.0]])}, "got nan at index (0, 1)"),
        ({"y": np.array([[1.0, 2.0], [np.inf, 1.0]])}, "got inf at index (1, 0)"),
        ({"y": np.array([["a", "b"]])}, "got dtype <U1"),
        ({"y": np.eye(3), "sigma2": 0.0}, "got 0.0"),
        ({"y": np.eye(3), "sigma2": -1.5}, "got -1.5"),
        ({"y": np.eye(3), "sigma2": float("nan")}, "got nan"),
        ({"y": np.eye(3), "h": 0}, "got 0"),
        ({"y": np.eye(3), "h": -2}, "got -2"),
        ({"y": np.eye(3), "h": 2.5}, "got 2.5"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        evbmf(**kwargs)


def test_evbmf_rank_validates_too():
    with pytest.raises(ValueError, match=re.escape("got shape (3,)")):
        evbmf_rank([1.0, 2.0, 3.0])


def test_module_imports_without_keras_or_tensorflow():
    path = Path(vbmf_module.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('vbmf_alone', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "assert mod.__all__ == ['evbmf', 'evbmf_rank']\n"
        "bad = [m for m in ('keras', 'tensorflow', 'tfcompress') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
