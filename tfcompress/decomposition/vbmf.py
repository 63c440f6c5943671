"""Empirical variational Bayesian matrix factorization (EVBMF): rank and noise estimation.

Written from the analytic solution in S. Nakajima, M. Sugiyama, S. D. Babacan and
R. Tomioka, "Global analytic solution of fully-observed variational Bayesian matrix
factorization", JMLR 14 (2013) 1-37 (the empirical VB theorem, hyperparameters of the
priors on both factors estimated; noise variance estimated by minimizing the free
energy). Kim et al., "Compression of deep convolutional neural networks for fast and
low power mobile applications" (ICLR 2016) apply it to the mode-0 / mode-1 unfoldings
of a convolution kernel to choose the Tucker-2 ranks.

Notation (as in the paper): the observation is Y (L x M) with L <= M (transposed
otherwise), alpha = L / M, gamma_1 >= ... >= gamma_L its singular values, sigma^2 the
noise variance, x_h = gamma_h^2 / (M sigma^2).

- Threshold. A component is kept (non-zero) iff gamma_h > gamma_EVB with

      gamma_EVB = sigma * sqrt(M + L + sqrt(L M) (kappa + 1 / kappa))
                = sigma * sqrt(M (1 + tau_bar) (1 + alpha / tau_bar)),

  kappa = tau_bar / sqrt(alpha) the zero-cross of the decreasing function
  Xi(kappa) = Phi(sqrt(alpha) kappa) + Phi(kappa / sqrt(alpha)), Phi(z) = log(1+z)/z - 1/2
  (for alpha = 1, tau_bar = 2.5129...). In x units: x_bar = (1+tau_bar)(1+alpha/tau_bar).
- Estimator. A kept component has the shrunk singular value

      gamma_h^EVB = gamma_h / 2 * (1 - (L+M) sigma^2 / gamma_h^2
                    + sqrt((1 - (L+M) sigma^2 / gamma_h^2)^2 - 4 L M sigma^4 / gamma_h^4)),

  equivalently gamma_h^EVB = gamma_h tau_h / x_h, with
  tau_h = (x_h - (1+alpha) + sqrt((x_h - (1+alpha))^2 - 4 alpha)) / 2.
- Noise variance. Up to constants, 2F / M as a function of s = sigma^2 is

      f(s) = L log s + ||Y||_F^2 / (M s)
             + sum_{h <= H, x_h > x_bar} [log(1+tau_h) + alpha log(1+tau_h/alpha) - tau_h],

  whose stationary points satisfy s = (||Y||_F^2 - sum_h gamma_h gamma_h^EVB) / (L M).
  The minimizer lies in [s_low, s_up] with s_up = ||Y||_F^2 / (L M) and
  s_low = max(gamma_{Hb+1}^2 / (M x_bar), sum_{h > Hb} gamma_h^2 / (M (L - Hb))),
  Hb = min(ceil(L / (1 + alpha)) - 1, H) the bound on the EVB rank.
  f is continuous but piecewise (the set of kept components changes at
  s = gamma_h^2 / (M x_bar)). On each piece df/ds = q(s) / s with q concave in 1 / s,
  so a piece holds at most one interior minimum: found by bisection on the sign of q,
  after a bounded scalar maximization of q where its sign is the same at both ends
  (`scipy.optimize.minimize_scalar`, or a golden-section search when SciPy is
  absent). The best of these minima and the interval's two ends wins.
"""

import itertools
import math
import numbers

import numpy as np

try:  # optional: only the bounded scalar minimization
    from scipy.optimize import minimize_scalar as _minimize_scalar
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    _minimize_scalar = None

__all__ = ["evbmf", "evbmf_rank"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _tau_bar(alpha):
    """The positive zero-cross tau_bar of log(1+t) + alpha log(1+t/alpha) - t."""

    def excess(t):  # > 0 on (0, tau_bar), < 0 beyond; maximal at t = sqrt(alpha)
        return math.log1p(t) + alpha * math.log1p(t / alpha) - t

    lo = math.sqrt(alpha)
    hi = 2.0 * lo + 1.0
    while excess(hi) > 0.0:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0.0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return 0.5 * (lo + hi)


def _tau(x, alpha):
    """tau(x) = (x - (1+alpha) + sqrt((x - (1+alpha))^2 - 4 alpha)) / 2, the inverse of
    x = (1+tau)(1+alpha/tau) on tau >= sqrt(alpha)."""
    d = x - (1.0 + alpha)
    return 0.5 * (d + np.sqrt(np.maximum(d * d - 4.0 * alpha, 0.0)))


def _free_energy(s, sq, total, length, width, alpha, x_bar):
    """f(s) above: 2F/M up to constants, sq the squared singular values within the cap."""
    x = sq / (width * s)
    tau = _tau(x[x > x_bar], alpha)
    kept = np.sum(np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau)
    return length * math.log(s) + total / (width * s) + kept


def _golden_section(fun, lo, hi, xtol):
    """Minimizes a scalar function on [lo, hi] by golden-section search."""
    a, b = lo, hi
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    fc, fd = fun(c), fun(d)
    while b - a > xtol * (abs(a) + abs(b)) + 1e-300:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = fun(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = fun(d)
    return (c, fc) if fc <= fd else (d, fd)


def _minimize_bounded(fun, lo, hi):
    """(argmin, min) of fun on [lo, hi], the end points included."""
    if _minimize_scalar is not None:
        res = _minimize_scalar(
            fun, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10 * hi}
        )
        best = (float(res.x), float(res.fun))
    else:
        best = _golden_section(fun, lo, hi, 1e-10)
    for end in (lo, hi):
        value = fun(end)
        if value < best[1]:
            best = (end, value)
    return best


def _estimate_sigma2(sq, total, length, width, cap, alpha, x_bar):
    """The EVB noise variance (scaled units): f minimized over [s_low, s_up].

    Component h is kept iff s < b_h = gamma_h^2 / (M x_bar), so between consecutive
    break points b_h the kept set is fixed and df/ds = q(s) / s with

        q(s) = L - ||Y||^2 / (M s) + sum_{kept h} tau_h(s).

    tau(x) is concave in x and x_h is linear in u = 1 / s, so q is concave in u: on each
    piece f has at most one interior local minimum, where q changes sign from - to +
    as s grows. At a break point f has a concave kink (q drops by tau_bar), never a
    minimum. The global minimum is the best of the pieces' minima and the two ends.
    """
    upper = total / (length * width)
    h_bar = min(math.ceil(length / (1.0 + alpha)) - 1, cap)
    # sq holds all min(L, M) = L squared singular values here (not only the capped ones).
    lower = max(sq[h_bar] / (width * x_bar), float(np.mean(sq[h_bar:])) / width)
    # An exactly low-rank matrix has lower = 0 and f -> -inf as s -> 0: keep s > 0.
    lower = min(max(lower, 1e-12 * upper), upper)
    if lower >= upper:
        return upper
    capped = sq[:cap]
    breaks = capped / (width * x_bar)
    inside = breaks[(breaks > lower) & (breaks < upper)]
    edges = np.unique(np.concatenate(([lower, upper], inside)))

    candidates = [lower, upper]
    for lo, hi in itertools.pairwise(edges.tolist()):
        top = capped[: int(np.count_nonzero(breaks > 0.5 * (lo + hi)))]

        def slope(s, top=top):  # q(s), the sign of df/ds on this piece
            return length - total / (width * s) + float(np.sum(_tau(top / (width * s), alpha)))

        if slope(lo) >= 0.0:
            continue  # q concave in 1/s and q(lo) >= 0: no interior minimum
        if slope(hi) <= 0.0:
            # q < 0 at both ends: a minimum only if q rises above 0 in between.
            peak, neg_q = _minimize_bounded(lambda s, slope=slope: -slope(s), lo, hi)
            if -neg_q <= 0.0:
                continue
            hi = peak
        # q(lo) < 0 < q(hi), one sign change: bisection (geometric) on q.
        for _ in range(200):
            mid = math.sqrt(lo * hi)
            if slope(mid) < 0.0:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 4e-16 * hi:
                break
        candidates.append(0.5 * (lo + hi))

    values = [_free_energy(s, capped, total, length, width, alpha, x_bar) for s in candidates]
    return candidates[int(np.argmin(values))]


def _as_matrix(y):
    try:
        arr = np.asarray(y)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"y must be a 2-D numeric array; got {y!r}") from exc
    if arr.ndim != 2:
        raise ValueError(f"y must be a 2-D array; got shape {arr.shape} (ndim={arr.ndim})")
    if arr.size == 0:
        raise ValueError(f"y must not be empty; got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"y must be a real numeric array; got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"y must be real; got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"y must contain only finite values; got {arr[index]} at index {index} "
            f"({int(bad.sum())} non-finite value(s))"
        )
    return arr


def evbmf(y, sigma2=None, h=None):
    """Empirical VB matrix factorization of y: its rank, VB singular values, noise.

    Nakajima, Sugiyama, Babacan and Tomioka, "Global analytic solution of
    fully-observed variational Bayesian matrix factorization", JMLR 14 (2013): the
    empirical VB (EVB) solution. With y (L x M, transposed so that L <= M),
    alpha = L / M and singular values gamma_h, a component is kept iff

        gamma_h > gamma_EVB = sigma * sqrt(M + L + sqrt(L M) (kappa + 1/kappa)),

    kappa the zero-cross of Phi(sqrt(alpha) k) + Phi(k / sqrt(alpha)),
    Phi(z) = log(1 + z) / z - 1/2; a kept component is shrunk to

        gamma_h^EVB = gamma_h / 2 * (1 - (L+M) sigma^2 / gamma_h^2
                      + sqrt((1 - (L+M) sigma^2 / gamma_h^2)^2 - 4 L M sigma^4 / gamma_h^4)).

    Without sigma2, sigma^2 minimizes the EVB free energy over its admissible interval
    [s_low, ||y||_F^2 / (L M)] (see the module docstring); the estimated rank is then at
    most ceil(L / (1 + alpha)) - 1.

    Args:
        y: a 2-D real array (L x M), finite, not empty.
        sigma2: the noise variance, a positive finite number; None estimates it.
        h: the largest rank allowed, a positive integer (values above min(L, M) act as
            min(L, M)); None means min(L, M).

    Returns:
        A dict with "rank" (int, the number of kept components), "singular_values"
        (float64 array of the kept VB singular values gamma_h^EVB, descending, length
        "rank") and "sigma2" (float, the noise variance used: the estimate, or the one
        given). An all-zero y with sigma2 None gives rank 0 and sigma2 0.0.

    Raises:
        ValueError: y is not 2-D, is empty, is not real numeric or has non-finite
            values; sigma2 is not a positive finite number; h is not a positive
            integer. The message names the value received.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.normal(size=(40, 3)) @ rng.normal(size=(3, 60)) * 3.0
        >>> y += 0.1 * rng.normal(size=(40, 60))
        >>> out = evbmf(y)
        >>> out["rank"], round(out["sigma2"] / 0.01, 1)
        (3, 1.0)
    """
    arr = _as_matrix(y)
    if sigma2 is not None:
        if isinstance(sigma2, bool) or not isinstance(sigma2, numbers.Real):
            raise ValueError(f"sigma2 must be a positive number or None; got {sigma2!r}")
        if not (math.isfinite(float(sigma2)) and float(sigma2) > 0.0):
            raise ValueError(f"sigma2 must be positive and finite; got {sigma2!r}")
    if h is not None:
        if isinstance(h, bool) or not isinstance(h, numbers.Integral):
            raise ValueError(f"h must be a positive integer or None; got {h!r}")
        if h <= 0:
            raise ValueError(f"h must be a positive integer; got {h!r}")

    if arr.shape[0] > arr.shape[1]:
        arr = arr.T
    length, width = arr.shape
    cap = length if h is None else min(int(h), length)
    alpha = length / width
    tau_bar = _tau_bar(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)

    gamma = np.linalg.svd(arr, compute_uv=False)  # descending, length L
    total = float(np.sum(arr * arr))
    if total == 0.0:
        empty = np.zeros(0)
        return {"rank": 0, "singular_values": empty,
                "sigma2": 0.0 if sigma2 is None else float(sigma2)}

    # Work in units where ||y||_F^2 / (L M) = 1 (the rank does not depend on scale).
    scale = total / (length * width)
    sq = gamma * gamma / scale
    if sigma2 is None:
        s = _estimate_sigma2(sq, total / scale, length, width, cap, alpha, x_bar)
        sigma2_out = float(s * scale)
    else:
        sigma2_out = float(sigma2)
        s = sigma2_out / scale

    kept = sq[:cap] > width * s * x_bar  # gamma_h > gamma_EVB
    rank = int(np.count_nonzero(kept))
    g = gamma[:rank]
    r = (length + width) * sigma2_out / (g * g)
    disc = (1.0 - r) ** 2 - 4.0 * length * width * sigma2_out**2 / g**4
    values = 0.5 * g * (1.0 - r + np.sqrt(np.maximum(disc, 0.0)))
    return {"rank": rank, "singular_values": values, "sigma2": sigma2_out}


def evbmf_rank(y):
    """The EVBMF rank of y (noise variance estimated): `evbmf(y)["rank"]`.

    Args:
        y: a 2-D real array, finite, not empty.

    Returns:
        int: the number of singular values above the EVB threshold
        sigma * sqrt(M + L + sqrt(L M) (kappa + 1/kappa)) at the estimated sigma^2.

    Raises:
        ValueError: as `evbmf` for a bad y.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> evbmf_rank(rng.normal(size=(30, 50)))
        0
    """
    return evbmf(y)["rank"]
