"""One registry of what tfcompress knows about each layer type.

For every layer class, `layer_traits(layer)` answers, in one place:

- `kind`: how channels flow through it, which structured pruning and quantization
  planning read:
    "weighted"      has weight matrices that produce new channels (Conv, Dense, ...)
    "merge"         element-wise merge of inputs of equal shape (Add, Multiply, ...)
    "concat"        concatenation along the channel axis
    "pass_through"  keeps the channels one to one (BatchNormalization, activations,
                    pooling, dropout, padding, Shift, ...)
    "reshape"       rearranges the elements (Flatten, Reshape, Permute)
    "other"         anything else (the default for unknown layers)
- `kernels`: attribute names of its weight matrices (what pruning and clustering
  act on; never biases or statistics), and `kernel_axes`: per kernel, the
  (input-channel axis, output-channel axis) of its shape;
- `bias`: the attribute name of its bias, if any;
- `value_preserving`: every output element is an input element or zero (max
  pooling, reshapes, padding, cropping, dropout at inference, Shift), so its
  output has its input's int8 scale;
- fields that a technique sets for its own use: `counter` (the profile's
  operation counter, `tfcompress.analysis.register_counter`), `lowering` (how
  `tfcompress.lowering.lower_model` expands a composite layer),
  `quantization` (how `quantize_model` treats the layer: "weights",
  "adder", "batchnorm", "output") and `channels` (how structured pruning
  follows and removes its channels: a `tfcompress.pruning.channels.ChannelHandler`).

Lookups follow the class's MRO field by field: a subclass of Conv2D is weighted
with a kernel unless it registers otherwise. A custom layer joins with
`register_layer_traits(MyLayer, kind="weighted", kernels=("w",))`, or, for pruning
and clustering, by defining `get_prunable_weights()` (tfmot's `PrunableLayer`
protocol), which wins over an inherited `kernels` entry.

Example:
    >>> layer_traits(keras.layers.Conv2D(8, 3)).kernels
    ('kernel',)
    >>> register_layer_traits(MyLayer, kind="pass_through", value_preserving=True)
"""

import dataclasses

import keras
from keras import layers

__all__ = [
    "KINDS",
    "QUANTIZATION_ROLES",
    "LayerTraits",
    "has_kernels",
    "kernel_layer_names",
    "kernel_variables",
    "layer_traits",
    "register_layer_traits",
]

KINDS = ("weighted", "merge", "concat", "pass_through", "reshape", "other")
QUANTIZATION_ROLES = ("weights", "adder", "batchnorm", "output")


@dataclasses.dataclass(frozen=True)
class LayerTraits:
    """What tfcompress knows about a layer type (see the module docstring).

    Attributes:
        kind: one of `KINDS`.
        kernels: attribute names of the weight matrices.
        kernel_axes: (input-channel axis, output-channel axis) of each kernel.
        bias: attribute name of the bias, or None.
        value_preserving: outputs are input elements or zeros.
        counter: `fn(layer, input_shape, output_shape) -> dict` for the profile.
        lowering: `fn(layer, inputs, name) -> outputs`, expanding a composite layer.
        quantization: one of `QUANTIZATION_ROLES`, or None.
        channels: the structured-pruning handler of the layer type, or None.
    """

    kind: str = "other"
    kernels: tuple = ()
    kernel_axes: tuple = ()
    bias: str | None = None
    value_preserving: bool = False
    counter: object = None
    lowering: object = None
    quantization: str | None = None
    channels: object = None


_FIELDS = tuple(f.name for f in dataclasses.fields(LayerTraits))
_REGISTRY = {}  # class -> {field: value}, only the fields registered for that class


def register_layer_traits(layer_class, **fields):
    """Registers (or updates) traits of a layer class.

    Only the given fields are set; others keep what the class registered before
    or inherit from its bases.

    Args:
        layer_class: a subclass of `keras.layers.Layer`.
        **fields: any of the `LayerTraits` attributes.

    Returns:
        `layer_class`.

    Raises:
        ValueError: for a class that is not a Layer subclass, an unknown field, a
            kind outside `KINDS`, a quantization role outside `QUANTIZATION_ROLES`,
            or `kernel_axes` that do not match `kernels`.

    Example:
        >>> register_layer_traits(MyConv, kind="weighted", kernels=("kernel",),
        ...                       kernel_axes=((-2, -1),), bias="bias")
    """
    if not (isinstance(layer_class, type) and issubclass(layer_class, layers.Layer)):
        raise ValueError(  # noqa: TRY004
            "`layer_class` must be a subclass of keras.layers.Layer. "
            f"Received: layer_class={layer_class!r}"
        )
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"Unknown layer trait(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}."
        )
    if "kind" in fields and fields["kind"] not in KINDS:
        raise ValueError(
            f"`kind` must be one of {', '.join(map(repr, KINDS))}. Received: kind={fields['kind']!r}"
        )
    role = fields.get("quantization")
    if role is not None and role not in QUANTIZATION_ROLES:
        raise ValueError(
            f"`quantization` must be None or one of {', '.join(map(repr, QUANTIZATION_ROLES))}. "
            f"Received: quantization={role!r}"
        )
    if "kernels" in fields:
        fields["kernels"] = tuple(fields["kernels"])
        fields.setdefault("kernel_axes", ((-2, -1),) * len(fields["kernels"]))
    if "kernel_axes" in fields:
        fields["kernel_axes"] = tuple(tuple(a) for a in fields["kernel_axes"])
        kernels = fields.get("kernels", _resolve(layer_class).kernels)
        if len(fields["kernel_axes"]) != len(kernels):
            raise ValueError(
                f"`kernel_axes` needs one (input axis, output axis) pair per kernel "
                f"{kernels}. Received: kernel_axes={fields['kernel_axes']!r}"
            )
    for name in ("counter", "lowering"):
        if fields.get(name) is not None and not callable(fields[name]):
            raise ValueError(f"`{name}` must be callable. Received: {name}={fields[name]!r}")
    _REGISTRY.setdefault(layer_class, {}).update(fields)
    _resolve.cache_clear()
    return layer_class


def _lookup(layer_class):
    values = {}
    for cls in reversed(getattr(layer_class, "__mro__", ())):
        values.update(_REGISTRY.get(cls, {}))
    return LayerTraits(**values)


class _Cache:
    """A small memo of `_lookup`, cleared whenever the registry changes."""

    def __init__(self):
        self.values = {}

    def __call__(self, layer_class):
        if layer_class not in self.values:
            self.values[layer_class] = _lookup(layer_class)
        return self.values[layer_class]

    def cache_clear(self):
        self.values.clear()


_resolve = _Cache()


def layer_traits(layer_or_class):
    """The `LayerTraits` of a layer or layer class (defaults for unknown types).

    Args:
        layer_or_class: a layer instance or class.

    Returns:
        A `LayerTraits`.
    """
    cls = layer_or_class if isinstance(layer_or_class, type) else type(layer_or_class)
    return _resolve(cls)


def _own_kernels(layer):
    """Kernel attribute names registered for the layer's exact class, or None."""
    entry = _REGISTRY.get(type(layer), {})
    return entry.get("kernels")


def kernel_attribute_names(layer):
    """The attribute names of `layer`'s weight matrices, or None if it has none we know.

    A layer defining `get_prunable_weights()` (tfmot's protocol) uses that method
    instead, unless its exact class registered `kernels`; for it this returns None.
    """
    own = _own_kernels(layer)
    if own:
        return own
    if hasattr(layer, "get_prunable_weights"):
        return None
    return layer_traits(layer).kernels or None


def kernel_variables(layer):
    """The weight-matrix variables of a built layer (pruning and clustering act on these).

    Args:
        layer: a built Keras layer.

    Returns:
        A list of `keras.Variable`: the `kernels` attributes of its traits, or what
        `layer.get_prunable_weights()` returns. Empty if the layer has none.
    """
    names = kernel_attribute_names(layer)
    if names is None:
        if hasattr(layer, "get_prunable_weights"):
            return list(layer.get_prunable_weights())
        return []
    return [getattr(layer, name) for name in names]


def has_kernels(layer):
    """True if `layer` has weight matrices that pruning and clustering can act on."""
    return hasattr(layer, "get_prunable_weights") or kernel_attribute_names(layer) is not None


def kernel_layer_names():
    """Names of the registered layer classes with weight matrices, for error messages."""
    return sorted({cls.__name__ for cls, entry in _REGISTRY.items() if entry.get("kernels")})


# ------------------------------------------------------------------ Keras' own layers

_CONV = (-2, -1)  # kernel (..., C_in, C_out)
_CONV_TRANSPOSE = (-1, -2)  # kernel (..., C_out, C_in)

for _cls in (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Dense, layers.EinsumDense):
    register_layer_traits(_cls, kind="weighted", kernels=("kernel",), kernel_axes=(_CONV,),
                          bias="bias")
for _cls in (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose):
    register_layer_traits(_cls, kind="weighted", kernels=("kernel",),
                          kernel_axes=(_CONV_TRANSPOSE,), bias="bias")
# Depthwise kernels (..., C_in, multiplier): output channel c * multiplier + m.
for _cls in (layers.DepthwiseConv1D, layers.DepthwiseConv2D):
    register_layer_traits(_cls, kind="weighted", kernels=("kernel",), kernel_axes=((-2, -1),),
                          bias="bias")
for _cls in (layers.SeparableConv1D, layers.SeparableConv2D):
    register_layer_traits(
        _cls, kind="weighted", kernels=("depthwise_kernel", "pointwise_kernel"),
        kernel_axes=((-2, -1), (-2, -1)), bias="bias",
    )
register_layer_traits(layers.Embedding, kind="weighted", kernels=("embeddings",),
                      kernel_axes=((0, -1),))
for _cls in (layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum,
             layers.Minimum):
    register_layer_traits(_cls, kind="merge")
register_layer_traits(layers.Concatenate, kind="concat")
for _cls in (
    layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization,
    layers.ReLU, layers.LeakyReLU, layers.PReLU, layers.ELU, layers.Softmax,
    layers.Activation, layers.Rescaling,
    layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D,
    layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D,
    layers.GlobalAveragePooling3D,
):
    register_layer_traits(_cls, kind="pass_through")
for _cls in (
    layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
    layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D,
    layers.Dropout, layers.SpatialDropout1D, layers.SpatialDropout2D,
    layers.ZeroPadding1D, layers.ZeroPadding2D, layers.ZeroPadding3D,
    layers.Cropping1D, layers.Cropping2D, layers.Cropping3D, layers.Identity,
    keras.layers.InputLayer,
):
    register_layer_traits(_cls, kind="pass_through", value_preserving=True)
for _cls in (layers.Flatten, layers.Reshape, layers.Permute):
    register_layer_traits(_cls, kind="reshape", value_preserving=True)
del _cls
