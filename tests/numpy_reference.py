"""Pure-NumPy twins of every tfcompress layer, written from the math, not from the layers.

Nothing here imports TensorFlow or Keras: these functions are the ground truth that
the layer tests (and the export tests) compare against. Everything is computed in
float64; pass float32 arrays in and compare with a float32 tolerance.

Conventions (the Keras / TensorFlow ones):

- images are channels-last, ``(N, H, W, C)``;
- a convolution kernel is ``(kh, kw, C_in, C_out)``, a depthwise kernel
  ``(kh, kw, C_in, M)`` whose output channel ``c * M + m`` is the ``m``-th filter
  of input channel ``c``; a dense kernel is ``(C_in, C_out)``;
- "same" padding pads ``total = max((ceil(H/s) - 1) * s + k - H, 0)`` zeros,
  ``total // 2`` before and the rest after; "valid" pads nothing;
- a batch-norm parameter set ``bn`` is ``(gamma, beta, moving_mean, moving_variance)``.

Gradient helpers return vector-Jacobian products: given the upstream gradient
``g = dL/dy`` they return ``dL/dx`` and ``dL/dW``.
"""

import math

import numpy as np

BN_EPSILON = 1e-3  # Keras BatchNormalization's default, used by every tfcompress BN


def _pair(value):
    return (value, value) if np.isscalar(value) else tuple(value)


# --------------------------------------------------------------------------- geometry


def same_pads(size, kernel, stride):
    """(before, after) zeros that TensorFlow's "same" padding adds on one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def output_size(size, kernel, stride, padding):
    """Output length of a convolution on one axis."""
    if padding == "same":
        return -(-size // stride)
    if padding == "valid":
        return (size - kernel) // stride + 1
    raise ValueError(f"unknown padding {padding!r}")


def pad_input(x, kernel_size, strides, padding):
    """Zero-pads ``x`` (N, H, W, C) as a convolution with this geometry does.

    Returns:
        (padded, (top, left)): the padded array and the offsets of ``x`` in it.
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(strides)
    if padding == "valid":
        return np.asarray(x), (0, 0)
    if padding != "same":
        raise ValueError(f"unknown padding {padding!r}")
    ph, pw = same_pads(x.shape[1], kh, sh), same_pads(x.shape[2], kw, sw)
    return np.pad(x, [(0, 0), ph, pw, (0, 0)]), (ph[0], pw[0])


def extract_patches(x, kernel_size, strides=1, padding="same"):
    """Receptive fields of every output pixel: (N, OH, OW, kh, kw, C)."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(strides)
    n, h, w, c = x.shape
    oh, ow = output_size(h, kh, sh, padding), output_size(w, kw, sw, padding)
    xp, _ = pad_input(np.asarray(x, np.float64), (kh, kw), (sh, sw), padding)
    patches = np.zeros((n, oh, ow, kh, kw, c))
    for i in range(kh):
        for j in range(kw):
            patches[:, :, :, i, j, :] = xp[:, i : i + sh * (oh - 1) + 1 : sh,
                                           j : j + sw * (ow - 1) + 1 : sw, :]
    return patches


def scatter_patches(d_patches, input_shape, strides=1, padding="same"):
    """Adjoint of `extract_patches`: sums patch gradients back onto the input."""
    n, oh, ow, kh, kw, c = d_patches.shape
    sh, sw = _pair(strides)
    _, h, w, _ = input_shape
    if padding == "same":
        (top, bottom), (left, right) = same_pads(h, kh, sh), same_pads(w, kw, sw)
    else:
        top = bottom = left = right = 0
    dxp = np.zeros((n, h + top + bottom, w + left + right, c))
    for i in range(kh):
        for j in range(kw):
            dxp[:, i : i + sh * (oh - 1) + 1 : sh,
                j : j + sw * (ow - 1) + 1 : sw, :] += d_patches[:, :, :, i, j, :]
    return dxp[:, top : top + h, left : left + w, :]


# ----------------------------------------------------------------- plain layers


def conv2d(x, kernel, strides=1, padding="same", bias=None):
    """Cross-correlation ``y = sum x_patch * K`` (Keras Conv2D)."""
    kh, kw, _, _ = kernel.shape
    patches = extract_patches(x, (kh, kw), strides, padding)
    y = np.einsum("nhwijc,ijco->nhwo", patches, np.asarray(kernel, np.float64))
    return y if bias is None else y + bias


def conv2d_grads(x, kernel, g, strides=1, padding="same"):
    """(dL/dx, dL/dK) of `conv2d` for the upstream gradient ``g``."""
    kh, kw, _, _ = kernel.shape
    patches = extract_patches(x, (kh, kw), strides, padding)
    g = np.asarray(g, np.float64)
    d_kernel = np.einsum("nhwijc,nhwo->ijco", patches, g)
    d_patches = np.einsum("nhwo,ijco->nhwijc", g, np.asarray(kernel, np.float64))
    return scatter_patches(d_patches, x.shape, strides, padding), d_kernel


def depthwise_conv2d(x, kernel, strides=1, padding="same"):
    """Keras DepthwiseConv2D: kernel (kh, kw, C, M), output channel c*M + m."""
    kh, kw, c, m = kernel.shape
    patches = extract_patches(x, (kh, kw), strides, padding)
    y = np.einsum("nhwijc,ijcm->nhwcm", patches, np.asarray(kernel, np.float64))
    return y.reshape(y.shape[:3] + (c * m,))


def dense(x, kernel, bias=None):
    y = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    return y if bias is None else y + bias


def batchnorm(x, bn, epsilon=BN_EPSILON):
    """Inference-mode batch normalization over the last axis."""
    gamma, beta, mean, var = (np.asarray(p, np.float64) for p in bn)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def relu(x):
    return np.maximum(x, 0.0)


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def hard_sigmoid(x):
    """relu6(x + 3) / 6, the GhostNet (PyTorch) squeeze-excite gate."""
    return relu6(x + 3.0) / 6.0


# ----------------------------------------------------------------------- Ghost


def ghost_conv(x, primary_kernel, primary_bn, cheap_kernel=None, cheap_bn=None, *,
               filters, strides=1, padding="same", relu_on=True, epsilon=BN_EPSILON):
    """Ghost module.

    ``m = ceil(filters / ratio)`` intrinsic maps from a strided conv + BN (+ ReLU);
    ghosts from a stride-1 "same" depthwise conv with depth multiplier ``ratio - 1``
    (+ BN + ReLU); output ``concat[primary, ghosts][..., :filters]``. With
    ``cheap_kernel=None`` (ratio 1) the output is the primary branch alone.
    """
    primary = batchnorm(conv2d(x, primary_kernel, strides, padding), primary_bn, epsilon)
    if relu_on:
        primary = relu(primary)
    if cheap_kernel is None:
        return primary[..., :filters]
    ghosts = batchnorm(depthwise_conv2d(primary, cheap_kernel, 1, "same"), cheap_bn, epsilon)
    if relu_on:
        ghosts = relu(ghosts)
    return np.concatenate([primary, ghosts], axis=-1)[..., :filters]


def squeeze_excite(x, reduce_kernel, reduce_bias, expand_kernel, expand_bias):
    """x * hard_sigmoid(W2 relu(W1 mean_hw(x) + b1) + b2), 1x1 kernels (1, 1, C, R)."""
    pooled = x.mean(axis=(1, 2), keepdims=True)
    hidden = relu(conv2d(pooled, reduce_kernel, 1, "valid", reduce_bias))
    gate = conv2d(hidden, expand_kernel, 1, "valid", expand_bias)
    return x * hard_sigmoid(gate)


def ghost_bottleneck(x, params, *, mid_channels, out_channels, strides=1,
                     epsilon=BN_EPSILON):
    """Ghost bottleneck.

    ``params`` holds:
        ghost1, ghost2: dicts of `ghost_conv` arrays (primary_kernel, primary_bn,
            cheap_kernel, cheap_bn);
        dw_kernel, dw_bn: the stride-2 depthwise conv + BN (used when strides > 1);
        se: None or (reduce_kernel, reduce_bias, expand_kernel, expand_bias);
        shortcut: None (identity) or dict(dw_kernel, dw_bn, conv_kernel, conv_bn).
    """
    h = ghost_conv(x, **params["ghost1"], filters=mid_channels, relu_on=True,
                   epsilon=epsilon)
    if strides > 1:
        h = batchnorm(depthwise_conv2d(h, params["dw_kernel"], strides, "same"),
                      params["dw_bn"], epsilon)
    if params.get("se") is not None:
        h = squeeze_excite(h, *params["se"])
    h = ghost_conv(h, **params["ghost2"], filters=out_channels, relu_on=False,
                   epsilon=epsilon)
    sc = params.get("shortcut")
    if sc is None:
        shortcut = np.asarray(x, np.float64)
    else:
        shortcut = batchnorm(depthwise_conv2d(x, sc["dw_kernel"], strides, "same"),
                             sc["dw_bn"], epsilon)
        shortcut = batchnorm(conv2d(shortcut, sc["conv_kernel"], 1, "valid"),
                             sc["conv_bn"], epsilon)
    return h + shortcut


# ----------------------------------------------------------------------- Shift


def shift_offsets(channels, kernel_size):
    """(dy, dx) per channel: k*k contiguous groups of channels // k^2, row-major
    offsets from (-k//2, -k//2) to (k//2, k//2); leftover channels (0, 0)."""
    k = kernel_size
    group = channels // (k * k)
    offsets = [(0, 0)] * channels
    for g in range(k * k):
        for c in range(g * group, (g + 1) * group):
            offsets[c] = (g // k - k // 2, g % k - k // 2)
    return offsets


def shift(x, kernel_size=3):
    """y[n, h, w, c] = x[n, h + dy(c), w + dx(c), c], zero outside the image."""
    x = np.asarray(x, np.float64)
    _, height, width, channels = x.shape
    y = np.zeros_like(x)
    for c, (dy, dx) in enumerate(shift_offsets(channels, kernel_size)):
        for h in range(height):
            if not 0 <= h + dy < height:
                continue
            for w in range(width):
                if 0 <= w + dx < width:
                    y[:, h, w, c] = x[:, h + dy, w + dx, c]
    return y


def shift_conv(x, kernel, bias=None, kernel_size=3, strides=1):
    """Shift, then a 1x1 convolution that carries the stride."""
    return conv2d(shift(x, kernel_size), kernel, strides, "valid", bias)


# ----------------------------------------------------------------------- Adder


def adder_conv(x, kernel, strides=1, padding="same", bias=None):
    """Y[n,h,w,o] = -sum_{i,j,c} |Xpad[n, h*s+i, w*s+j, c] - W[i,j,c,o]| (+ b)."""
    kh, kw, c, o = kernel.shape
    patches = extract_patches(x, (kh, kw), strides, padding)
    rows = patches.reshape(patches.shape[:3] + (kh * kw * c,))
    w = np.asarray(kernel, np.float64).reshape(kh * kw * c, o)
    y = np.stack([-np.abs(rows - w[:, k]).sum(-1) for k in range(o)], axis=-1)
    return y if bias is None else y + bias


def adder_conv_grads(x, kernel, g, strides=1, padding="same"):
    """AdderNet backward of `adder_conv` (bias excluded).

        dL/dW[i,j,c,o] = sum_{n,h,w} (X_patch - W) * g            (full precision)
        dL/dX          = scatter( sum_o clip(W - X_patch, -1, 1) * g )   (HardTanh)

    Returns the raw (unscaled) gradients (dL/dx, dL/dW).
    """
    kh, kw, _, o = kernel.shape
    patches = extract_patches(x, (kh, kw), strides, padding)
    w = np.asarray(kernel, np.float64)
    g = np.asarray(g, np.float64)
    d_kernel = np.zeros_like(w)
    d_patches = np.zeros_like(patches)
    for k in range(o):
        diff = patches - w[..., k]  # (N, OH, OW, kh, kw, C)
        gk = g[..., k][..., None, None, None]
        d_kernel[..., k] = (diff * gk).sum(axis=(0, 1, 2))
        d_patches += np.clip(-diff, -1.0, 1.0) * gk
    return scatter_patches(d_patches, x.shape, strides, padding), d_kernel


def adder_dense(x, kernel, bias=None):
    """y[..., o] = -sum_i |x[..., i] - W[i, o]| (+ b)."""
    x = np.asarray(x, np.float64)[..., None]
    y = -np.abs(x - np.asarray(kernel, np.float64)).sum(axis=-2)
    return y if bias is None else y + bias


def adder_dense_grads(x, kernel, g):
    """(dL/dx, dL/dW) of `adder_dense`: full-precision (x - W) for W, HardTanh for x."""
    diff = np.asarray(x, np.float64)[..., None] - np.asarray(kernel, np.float64)
    gk = np.asarray(g, np.float64)[..., None, :]
    d_x = (np.clip(-diff, -1.0, 1.0) * gk).sum(axis=-1)
    d_kernel = (diff * gk).reshape((-1,) + diff.shape[-2:]).sum(axis=0)
    return d_x, d_kernel


def adaptive_scale(grad, eta):
    """AdderNet's adaptive learning rate: eta * sqrt(k) * g / ||g||_2, k = g.size."""
    grad = np.asarray(grad, np.float64)
    if eta is None:
        return grad
    return eta * math.sqrt(grad.size) * grad / np.linalg.norm(grad)


# ---------------------------------------------------------------------- Binary


def sign(x):
    """+1 where x >= 0, else -1 (sign(0) = +1)."""
    return np.where(np.asarray(x) >= 0, 1.0, -1.0)


def ste_grad(x, ste="ste_sign"):
    """d sign(x) / dx as the straight-through estimator defines it."""
    ax = np.abs(np.asarray(x, np.float64))
    if ste == "ste_sign":
        return (ax <= 1.0).astype(np.float64)
    if ste == "approx_sign":
        return np.where(ax <= 1.0, 2.0 - 2.0 * ax, 0.0)
    raise ValueError(f"unknown ste {ste!r}")


def binary_kernel(kernel, scale="channel"):
    """alpha * sign(W), alpha = mean |W| over all axes but the last; or sign(W)."""
    w = np.asarray(kernel, np.float64)
    if scale == "none":
        return sign(w)
    axes = tuple(range(w.ndim - 1))
    return sign(w) * np.abs(w).mean(axis=axes)


def binary_kernel_grad(kernel, d_binary, scale="channel"):
    """dL/dW given dL/d(binary kernel).

    Through sign (ste_sign): ``d_binary * alpha * 1{|W| <= 1}``; through alpha
    (scale="channel"): ``sum(d_binary * sign(W)) * sign0(W) / n`` where ``sign0`` is
    the derivative of |w| as TensorFlow defines it (0 at w = 0) and ``n`` the number
    of weights per output channel.
    """
    w = np.asarray(kernel, np.float64)
    d_binary = np.asarray(d_binary, np.float64)
    if scale == "none":
        return d_binary * ste_grad(w, "ste_sign")
    axes = tuple(range(w.ndim - 1))
    n = w.size // w.shape[-1]
    alpha = np.abs(w).mean(axis=axes)
    d_alpha = (d_binary * sign(w)).sum(axis=axes)
    return d_binary * alpha * ste_grad(w, "ste_sign") + d_alpha * np.sign(w) / n


def binary_conv(x, kernel, strides=1, padding="same", binarize_input=True,
                scale="channel", bias=None):
    """conv(sign(x) or x, alpha * sign(W)); "same" pads the binarized input with 0."""
    xb = sign(x) if binarize_input else np.asarray(x, np.float64)
    return conv2d(xb, binary_kernel(kernel, scale), strides, padding, bias)


def binary_conv_grads(x, kernel, g, strides=1, padding="same", binarize_input=True,
                      scale="channel", ste="ste_sign"):
    """(dL/dx, dL/dW) of `binary_conv` with the straight-through estimators."""
    xb = sign(x) if binarize_input else np.asarray(x, np.float64)
    d_xb, d_binary = conv2d_grads(xb, binary_kernel(kernel, scale), g, strides, padding)
    d_x = d_xb * ste_grad(x, ste) if binarize_input else d_xb
    return d_x, binary_kernel_grad(kernel, d_binary, scale)


def binary_dense(x, kernel, binarize_input=True, scale="channel", bias=None):
    """(sign(x) or x) @ (alpha * sign(W))."""
    xb = sign(x) if binarize_input else np.asarray(x, np.float64)
    return dense(xb, binary_kernel(kernel, scale), bias)


def binary_dense_grads(x, kernel, g, binarize_input=True, scale="channel",
                       ste="ste_sign"):
    """(dL/dx, dL/dW) of `binary_dense` (2-D x)."""
    xb = sign(x) if binarize_input else np.asarray(x, np.float64)
    g = np.asarray(g, np.float64)
    d_xb = g @ binary_kernel(kernel, scale).T
    d_binary = xb.T @ g
    d_x = d_xb * ste_grad(x, ste) if binarize_input else d_xb
    return d_x, binary_kernel_grad(kernel, d_binary, scale)


# ------------------------------------------------------------------ HORQ (BinaryConv input_order)


def horq(x, order):
    """HORQ's x_hat = sum_i beta_i H_i (Li et al. 2017), beta per position over the last axis.

    R_0 = x; H_i = sign(R_{i-1}); beta_i = mean_c |R_{i-1}|; R_i = R_{i-1} - beta_i H_i.
    """
    residual = np.asarray(x, np.float64)
    total = np.zeros_like(residual)
    for _ in range(order):
        term = np.abs(residual).mean(axis=-1, keepdims=True) * sign(residual)
        total += term
        residual = residual - term
    return total


def horq_grad(x, g, order, ste="ste_sign"):
    """dL/dx of `horq` for the upstream gradient g = dL/dx_hat, by reverse-mode by hand.

    Every sign passes `g * ste'(R)`; every beta = mean |R| passes `d_beta * sign0(R) / C`
    (sign0(0) = 0, TensorFlow's derivative of |r|); R_i = R_{i-1} - beta_i H_i passes
    its gradient to R_{i-1} and, negated, to the term beta_i H_i.
    """
    g = np.asarray(g, np.float64)
    residuals, signs, betas = [np.asarray(x, np.float64)], [], []
    for _ in range(order):
        r = residuals[-1]
        signs.append(sign(r))
        betas.append(np.abs(r).mean(axis=-1, keepdims=True))
        residuals.append(r - betas[-1] * signs[-1])
    d_next = np.zeros_like(g)  # dL/dR_order: R_order is not used
    for i in reversed(range(order)):
        r = residuals[i]
        d_term = g - d_next  # x_hat += term; R_{i+1} = R_i - term
        d_beta = (d_term * signs[i]).sum(axis=-1, keepdims=True)
        d_next = (d_next + d_term * betas[i] * ste_grad(r, ste)
                  + d_beta * np.sign(r) / r.shape[-1])
    return d_next


def _binarized(x, binarize_input, order):
    if not binarize_input:
        return np.asarray(x, np.float64)
    return sign(x) if order == 1 else horq(x, order)


def _binarized_grad(x, d_xb, binarize_input, order, ste):
    if not binarize_input:
        return d_xb
    return d_xb * ste_grad(x, ste) if order == 1 else horq_grad(x, d_xb, order, ste)


def horq_binary_conv(x, kernel, strides=1, padding="same", order=2, scale="channel",
                     bias=None):
    """BinaryConv(input_order=order): conv(horq(x) (order > 1) or sign(x), alpha * sign(W))."""
    return conv2d(_binarized(x, True, order), binary_kernel(kernel, scale), strides, padding,
                  bias)


def horq_binary_conv_grads(x, kernel, g, strides=1, padding="same", order=2,
                           scale="channel", ste="ste_sign"):
    """(dL/dx, dL/dW) of `horq_binary_conv`."""
    xb = _binarized(x, True, order)
    d_xb, d_binary = conv2d_grads(xb, binary_kernel(kernel, scale), g, strides, padding)
    return (_binarized_grad(x, d_xb, True, order, ste),
            binary_kernel_grad(kernel, d_binary, scale))


def horq_binary_dense(x, kernel, order=2, scale="channel", bias=None):
    """BinaryDense(input_order=order): horq(x) @ (alpha * sign(W)), beta per row."""
    return dense(_binarized(x, True, order), binary_kernel(kernel, scale), bias)


def horq_binary_dense_grads(x, kernel, g, order=2, scale="channel", ste="ste_sign"):
    """(dL/dx, dL/dW) of `horq_binary_dense` (2-D x)."""
    xb = _binarized(x, True, order)
    g = np.asarray(g, np.float64)
    d_xb = g @ binary_kernel(kernel, scale).T
    return (_binarized_grad(x, d_xb, True, order, ste),
            binary_kernel_grad(kernel, xb.T @ g, scale))


# ---------------------------------------------------------------------- Ternary (TWN)


def ternarize(w, threshold=0.7, axis=None):
    """TWN (Li & Liu 2016): (alpha, W_t) with Delta = threshold * mean |W|,
    W_t = sign(W) 1{|W| > Delta}, alpha = mean of |W| where |W| > Delta (0 if none).

    The means run over `axis` (None: the whole tensor); alpha keeps w's rank.
    """
    w = np.asarray(w, np.float64)
    mag = np.abs(w)
    delta = threshold * mag.mean(axis=axis, keepdims=True)
    kept = mag > delta
    count = kept.sum(axis=axis, keepdims=True)
    alpha = np.where(kept, mag, 0.0).sum(axis=axis, keepdims=True) / np.maximum(count, 1)
    return alpha, np.sign(w) * kept


def ternary_kernel(kernel, threshold=0.7):
    """alpha * W_t with Delta and alpha per output channel (every axis but the last)."""
    kernel = np.asarray(kernel, np.float64)
    alpha, w_t = ternarize(kernel, threshold, tuple(range(kernel.ndim - 1)))
    return alpha * w_t


def ternary_conv(x, kernel, strides=1, padding="same", threshold=0.7, bias=None):
    """conv(x, alpha * W_t)."""
    return conv2d(x, ternary_kernel(kernel, threshold), strides, padding, bias)


def ternary_conv_grads(x, kernel, g, strides=1, padding="same", threshold=0.7):
    """(dL/dx, dL/dW) of `ternary_conv`: the kernel gradient passes straight through."""
    return conv2d_grads(x, ternary_kernel(kernel, threshold), g, strides, padding)


def ternary_dense(x, kernel, threshold=0.7, bias=None):
    """x @ (alpha * W_t)."""
    return dense(x, ternary_kernel(kernel, threshold), bias)


def ternary_dense_grads(x, kernel, g, threshold=0.7):
    """(dL/dx, dL/dW) of `ternary_dense` (2-D x), straight through to W."""
    x = np.asarray(x, np.float64)
    g = np.asarray(g, np.float64)
    return g @ ternary_kernel(kernel, threshold).T, x.T @ g


def fake_quant(values, lo, hi, num_bits=8, narrow_range=False):
    """TensorFlow's FakeQuantWithMinMaxVars (nudged range, round half up), in float32 as
    the kernel computes."""
    f = np.float32
    qmin, qmax = f(1 if narrow_range else 0), f(2 ** num_bits - 1)
    scale = (f(hi) - f(lo)) / (qmax - qmin)
    zero = qmin - f(lo) / scale
    nudged_zero = np.clip(np.floor(zero + f(0.5)), qmin, qmax)
    nudged_lo = (qmin - nudged_zero) * scale
    nudged_hi = (qmax - nudged_zero) * scale
    clipped = np.clip(np.asarray(values, f), nudged_lo, nudged_hi)
    return np.floor((clipped - nudged_lo) * (f(1) / scale) + f(0.5)) * scale + nudged_lo
