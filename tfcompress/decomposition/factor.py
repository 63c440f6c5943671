"""The factorizations themselves, NumPy in and out: truncated SVD and Tucker-2.

- CP (Lebedev et al., ICLR 2015): K[i, j, c, o] ~= sum_r A[i, r] B[j, r] C[c, r] D[o, r];
  the layer becomes 1x1 (C_in -> R, kernel C), depthwise k_h x 1 (A, the vertical
  stride), depthwise 1 x k_w (B, the horizontal stride) and 1x1 (R -> C_out, kernel
  D^T with the weights folded in, bias, activation). Factors from tensorly's `parafac`
  (ALS from the SVD start).
- Truncated SVD (Eckart-Young): W (m x n) = U S V^T; the rank-r approximation
  W_r = U_r S_r V_r^T has ||W - W_r||_F^2 = sum_{i > r} s_i^2, the least of any rank r.
  A Dense layer (or a 1x1 Conv2D) becomes Dense(r, no bias) with kernel U_r S_r and
  Dense(n) with kernel V_r^T (Jaderberg et al. 2014; Denton et al. 2014).
- Tucker-2 (Kim et al., ICLR 2016): a conv kernel K (k_h, k_w, C_in, C_out) is
  approximated as G x_3 U_in x_4 U_out, U_in (C_in x R1) and U_out (C_out x R2) with
  orthonormal columns, core G (k_h, k_w, R1, R2). The layer becomes 1x1 (C_in -> R1,
  kernel U_in), k x k (R1 -> R2, kernel G, the layer's strides / padding / dilation)
  and 1x1 (R2 -> C_out, kernel U_out^T, the layer's bias and activation). The factors
  come from tensorly's `partial_tucker` (HOOI from the HOSVD start).

Ranks are chosen by `ranks_for_energy` (the smallest rank whose singular values hold a
fraction of the squared spectrum) or `ranks_for_ratio` (parameters kept).
"""

import math
import warnings

import numpy as np

__all__ = [
    "balance_cp_factors",
    "cp_factors",
    "cp_rank_for_ratio",
    "svd_factors",
    "svd_rank_for_energy",
    "svd_rank_for_ratio",
    "tucker2_factors",
    "tucker2_ranks_for_energy",
    "tucker2_ranks_for_ratio",
    "unfold",
]


def unfold(kernel, mode):
    """Mode-`mode` unfolding: rows index axis `mode`, columns all the other axes."""
    return np.moveaxis(np.asarray(kernel, np.float64), mode, 0).reshape(kernel.shape[mode], -1)


def _energy_rank(singular_values, energy):
    squared = np.square(np.asarray(singular_values, np.float64))
    total = squared.sum()
    if total == 0.0:
        return 1
    kept = np.cumsum(squared) / total
    return int(min(len(squared), np.searchsorted(kept, energy - 1e-12) + 1))


def svd_factors(matrix, rank):
    """Rank-`rank` factors of `matrix` (m x n): A (m x r) = U_r S_r, B (r x n) = V_r^T.

    Args:
        matrix: a 2-D array.
        rank: 1 <= rank <= min(m, n).

    Returns:
        `(a, b, error)`: float32 factors with `a @ b` the best rank-r approximation,
        and its relative error ||W - a b||_F / ||W||_F = sqrt(sum_{i > r} s_i^2 / sum s_i^2).
    """
    w = np.asarray(matrix, np.float64)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    a = u[:, :rank] * s[:rank]
    b = vt[:rank]
    total = float(np.sum(s**2))
    error = math.sqrt(float(np.sum(s[rank:] ** 2)) / total) if total else 0.0
    return a.astype(np.float32), b.astype(np.float32), error


def svd_rank_for_energy(matrix, energy):
    """The smallest r whose singular values hold `energy` of sum s_i^2."""
    return _energy_rank(np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False), energy)


def svd_rank_for_ratio(shape, ratio):
    """The largest r with r * (m + n) <= ratio * m * n (at least 1)."""
    m, n = shape
    return max(1, math.floor(ratio * m * n / (m + n)))


def tucker2_factors(kernel, ranks, seed=0):
    """Tucker-2 factors of a conv kernel (k_h, k_w, C_in, C_out) at ranks (R1, R2).

    Returns:
        `(first, core, last, error)`: float32 kernels of the three convolutions,
        shapes (1, 1, C_in, R1), (k_h, k_w, R1, R2), (1, 1, R2, C_out), and the
        relative reconstruction error ||K - K_hat||_F / ||K||_F.
    """
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    k = np.asarray(kernel, np.float64)
    r1, r2 = ranks
    previous = tl.get_backend()
    tl.set_backend("numpy")
    try:
        (core, (u_in, u_out)), _ = partial_tucker(
            k, rank=[r1, r2], modes=[2, 3], init="svd", n_iter_max=100, tol=1e-8,
            random_state=seed,
        )
    finally:
        tl.set_backend(previous)
    approx = np.einsum("hwab,ca,ob->hwco", core, u_in, u_out)
    norm = np.linalg.norm(k)
    error = float(np.linalg.norm(k - approx) / norm) if norm else 0.0
    first = u_in[None, None].astype(np.float32)               # (1, 1, C_in, R1)
    last = u_out.T[None, None].astype(np.float32)             # (1, 1, R2, C_out)
    return first, np.asarray(core, np.float32), last, error


def tucker2_ranks_for_energy(kernel, energy):
    """(R1, R2): the energy rank of the input-channel and output-channel unfoldings."""
    return tuple(
        _energy_rank(np.linalg.svd(unfold(kernel, mode), compute_uv=False), energy)
        for mode in (2, 3)
    )


def tucker2_ranks_for_ratio(kernel_shape, ratio):
    """(R, R) with R the largest rank whose three kernels hold <= ratio of the weights:
    C_in R + k_h k_w R^2 + R C_out <= ratio * k_h k_w C_in C_out (at least 1)."""
    kh, kw, c_in, c_out = kernel_shape
    budget = ratio * kh * kw * c_in * c_out
    a, b = kh * kw, c_in + c_out
    r = math.floor((-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a))
    r = max(1, min(r, c_in, c_out))
    return (r, r)


def cp_factors(kernel, rank, seed=0):
    """CP factors of a conv kernel (k_h, k_w, C_in, C_out) at rank R.

    Returns:
        `(first, vertical, horizontal, last, error)`: float32 kernels of the chain,
        shapes (1, 1, C_in, R), (k_h, 1, R, 1), (1, k_w, R, 1) (depthwise) and
        (1, 1, R, C_out), and the relative reconstruction error
        ||K - K_hat||_F / ||K||_F of the factors returned.
    """
    import tensorly as tl
    from tensorly.decomposition import parafac

    k = np.asarray(kernel, np.float64)
    previous = tl.get_backend()
    tl.set_backend("numpy")
    try:
        with warnings.catch_warnings():
            # A rank above k_h or k_w is normal for CP: tensorly's SVD initialisation
            # then fills the extra columns randomly and says so once per mode.
            warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs",
                                    category=UserWarning)
            weights, (a, b, c, d) = parafac(k, rank, init="svd", n_iter_max=200, tol=1e-8,
                                            random_state=seed, normalize_factors=False)
    finally:
        tl.set_backend(previous)
    d = d * np.asarray(weights)[None, :]
    a, b, c, d = balance_cp_factors(a, b, c, d)
    approx = np.einsum("ir,jr,cr,or->ijco", a, b, c, d)
    norm = np.linalg.norm(k)
    error = float(np.linalg.norm(k - approx) / norm) if norm else 0.0
    first = c[None, None].astype(np.float32)
    vertical = a[:, None, :, None].astype(np.float32)
    horizontal = b[None, :, :, None].astype(np.float32)
    last = d.T[None, None].astype(np.float32)
    return first, vertical, horizontal, last, error


def balance_cp_factors(*factors):
    """CP factors rescaled so that each component has the same norm in every factor.

    A CP component a_r o b_r o c_r o d_r is unchanged when its factors are scaled by
    numbers whose product is 1; ALS leaves those scales arbitrary (one factor can be
    1e3 times another). Each column r becomes f_r * g_r / ||f_r|| with g_r the
    geometric mean of the column norms, so the chain's intermediate activations have
    comparable ranges per channel (an int8 tensor shares one scale across channels).

    Args:
        *factors: 2-D arrays (dimension x R), the same R.

    Returns:
        The rescaled factors (float64), in order; a component with a zero column is
        zero in every factor.
    """
    factors = [np.asarray(f, np.float64) for f in factors]
    norms = np.stack([np.linalg.norm(f, axis=0) for f in factors])  # (factors, R)
    alive = np.all(norms > 0, axis=0)
    mean = np.exp(np.mean(np.log(np.where(norms > 0, norms, 1.0)), axis=0))
    scales = np.where(alive[None, :], mean[None, :] / np.where(norms > 0, norms, 1.0), 0.0)
    return [f * s[None, :] for f, s in zip(factors, scales)]


def cp_rank_for_ratio(kernel_shape, ratio):
    """The largest R with R (C_in + k_h + k_w + C_out) <= ratio * k_h k_w C_in C_out."""
    kh, kw, c_in, c_out = kernel_shape
    return max(1, int(ratio * kh * kw * c_in * c_out // (c_in + kh + kw + c_out)))
