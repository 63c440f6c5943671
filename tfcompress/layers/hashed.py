"""HashedDense: a Dense layer whose weight matrix shares `buckets` values by hashing.

Chen, Wilson, Tyree, Weinberger, Chen, "Compressing Neural Networks with the Hashing
Trick" (ICML 2015, HashedNets). The virtual weight matrix is

    V[i, j] = s(i, j) * w[h(i, j)],     h(i, j) in {0, ..., buckets - 1},  s(i, j) = +/-1

with fixed hash functions h and s of the position (and a seed), and `w` the only
trainable weights. The output is `activation(x @ V + b)`. The gradient with respect
to a bucket is the sum of the virtual gradients of the positions hashed into it,
signed: dL/dw[k] = sum_{h(i, j) = k} s(i, j) * dL/dV[i, j] (`ops.take`'s gradient).

The hashes are a 64-bit mix (splitmix64's finalizer) of `seed`, i and j, computed in
NumPy when the layer is built: they are not weights and are not saved (`seed` is in
the config, so a loaded layer rebuilds the same ones).
"""

import keras
import numpy as np
from keras import ops

from tfcompress.core.args import check_positive_int

__all__ = ["HashedDense", "hash_indices"]

_MASK = (1 << 64) - 1


def _mix(x):
    """splitmix64's finalizer on uint64 arrays (a bijection with good avalanche)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_indices(shape, buckets, seed):
    """The bucket index h(i, j) and sign s(i, j) of every position of a (m, n) matrix.

    Args:
        shape: (m, n).
        buckets: number of shared values.
        seed: integer seed of both hashes.

    Returns:
        `(index, sign)`: int32 array (m, n) in [0, buckets) and float32 array of +/-1.
    """
    m, n = shape
    i = np.arange(m, dtype=np.uint64)[:, None]
    j = np.arange(n, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        key = (np.uint64(seed & _MASK) * np.uint64(0x9E3779B97F4A7C15)
               + i * np.uint64(n) + j)
        first = _mix(key)
        second = _mix(first ^ np.uint64(0xD6E8FEB86659FD93))
    index = (first % np.uint64(buckets)).astype(np.int32)
    sign = np.where(second >> np.uint64(63), -1.0, 1.0).astype(np.float32)
    return index, sign


@keras.saving.register_keras_serializable(package="tfcompress")
class HashedDense(keras.layers.Layer):
    """Dense layer with a hashed, shared weight matrix (HashedNets).

        y = activation(x @ V + b),   V[i, j] = s(i, j) * w[h(i, j)]

    Args:
        units: output features.
        buckets: number of trainable shared weights (the compression is
            `in_features * units / buckets`).
        activation: as in Dense.
        use_bias: whether to add a bias (one per unit, not hashed).
        seed: seed of the hashes h and s.
        bucket_initializer: initializer of the buckets (default Glorot-uniform
            scaled to the virtual matrix's fan-in and fan-out).
        bias_initializer: as in Dense.
        **kwargs: standard Layer arguments.

    Raises:
        ValueError: for non-positive units or buckets, or a non-integer seed.

    Example:
        >>> layer = HashedDense(300, buckets=4096)
        >>> layer(keras.ops.ones((2, 784))).shape
        (2, 300)
    """

    def __init__(self, units, buckets, activation=None, use_bias=True, seed=0,
                 bucket_initializer=None, bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int("units", units)
        self.buckets = check_positive_int("buckets", buckets)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}")  # noqa: TRY004
        self.seed = int(seed)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.bucket_initializer = keras.initializers.get(bucket_initializer) \
            if bucket_initializer is not None else None
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        in_features = int(input_shape[-1])
        initializer = self.bucket_initializer
        if initializer is None:
            limit = float(np.sqrt(6.0 / (in_features + self.units)))
            initializer = keras.initializers.RandomUniform(-limit, limit)
        self.kernel_buckets = self.add_weight(
            name="buckets", shape=(self.buckets,), initializer=initializer)
        self.bias = self.add_weight(name="bias", shape=(self.units,),
                                    initializer=self.bias_initializer) if self.use_bias else None
        index, sign = hash_indices((in_features, self.units), self.buckets, self.seed)
        self._index, self._sign = index, sign

    def virtual_kernel(self):
        """The (in_features, units) matrix V the layer computes with."""
        return ops.take(self.kernel_buckets, ops.convert_to_tensor(self._index)) * \
            ops.convert_to_tensor(self._sign)

    def call(self, inputs):
        outputs = ops.matmul(inputs, self.virtual_kernel())
        if self.bias is not None:
            outputs = outputs + self.bias
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units, buckets=self.buckets,
            activation=keras.activations.serialize(self.activation), use_bias=self.use_bias,
            seed=self.seed,
            bucket_initializer=None if self.bucket_initializer is None else
            keras.initializers.serialize(self.bucket_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
        )
        return config
