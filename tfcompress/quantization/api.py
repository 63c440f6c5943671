"""`quantize_model`: a quantization-aware copy of any functional or Sequential model.

The model is lowered (`tfcompress.lowering.lower_model`: composite layers as the
standard layers they are made of, nested models flattened), its fusions are
planned on the graph (`plan.plan_fusions`), and it is rebuilt with the QAT layers
of `wrappers` where TFLite fuses and an `ActivationQuantizer` wherever TFLite
requantizes, so the Keras QAT model and the exported int8 file compute the same
thing.
"""

from keras import layers

from tfcompress.core.graph import ModelGraph, check_model, is_subclassed
from tfcompress.core.rewrite import fresh_copy, rebuild
from tfcompress.layers import Sign
from tfcompress.lowering import lower_model
from tfcompress.quantization.annotate import annotation_of
from tfcompress.quantization.plan import activation_of, plan_fusions
from tfcompress.quantization.quantizers import (
    ACTIVATION_BITS,
    FIXED_RANGE,
    FIXED_RANGE_ACTIVATIONS,
    RANGE_LEARNING,
    SIGN_RANGE,
    WEIGHT_BITS,
    ActivationQuantizer,
    check_bits,
)
from tfcompress.quantization.roles import (
    is_scale_preserving,
    quantization_role,
    supported_layer_names,
)
from tfcompress.quantization.wrappers import (
    QuantizeAdderWrapper,
    QuantizeBatchNorm,
    QuantizeWrapper,
)

__all__ = ["quantize_model"]


def _copy_weights(source, target):
    target.set_weights(source.get_weights())


def quantize_model(
    model, per_channel=True, fold_batchnorm=True, ema_decay=0.999, init_range=(-6.0, 6.0),
    *, activation_bits=8, weight_bits=8, range_learning="ema",
):
    """Returns a trainable quantization-aware copy of a functional or Sequential model.

    The copy has int8 fake quantization on its input, on every weighted layer's
    (BatchNorm-folded) weights and after every fused conv + bias + activation,
    add, concat, pooling, ... exactly where an integer-only TFLite file quantizes.
    It trains with `model.fit` (on several devices or workers with
    `tfcompress.distribute.fit`, which keeps the ranges equal on every replica;
    under `MirroredStrategy` plain `fit` lets each replica's ranges drift), saves to
    `.keras`, and `tfcompress.export.to_tflite(qat_model, mode="int8")` turns it
    into the int8 file using the learned ranges. The original model is unchanged.

    Args:
        model: a built functional or Sequential `keras.Model`: several inputs and
            outputs (lists or dicts), nested models (flattened) and shared layers
            included. Each model input gets its own quantizer ("quant_input" for
            a single input, "quant_<input name>" for several).
        per_channel: per-output-channel weight scales (TFLite's default) or per tensor;
            `quantize_annotate_layer` overrides it per layer.
        fold_batchnorm: fold BatchNormalization into the preceding weighted layer.
        ema_decay: decay of the activation ranges' moving averages.
        init_range: (min, max) where every activation range but the model
            input's and AdderConv's steps starts; the default (-6, 6) with
            ema_decay=0.999 is TF's and tfmot's QAT start, which keeps the ranges
            wide through a one-epoch fine-tuning (on MNIST LeNet-5 it gave 8.2 /
            4.6 more correct test images out of 10,000 than first-batch ranges,
            two seeds of four runs; benchmarks/RESULTS.md). None: each range
            starts at its first training batch's min/max (with ema_decay=0.99 it
            settles within a few dozen steps). The input's range always starts at
            the first batch: it is the data's range (tfmot tracks its min/max).
            So do an AdderConv's: -sum |x - w| grows with the fan-in, far past
            (-6, 6), which would clip nearly every output (and zero its gradient).
        activation_bits: 8 (int8) or 16: TFLite's 16x8 mode, int16 activations
            (symmetric, zero point 0) and int8 weights; export it with
            `to_tflite(qat, mode="int16x8")`. 16 bits supports the weighted layers
            (folded BatchNorm, fused ReLU / ReLU6), Add, Concatenate, pooling,
            reshapes and softmax; AdderConv / AdderDense, binarized inputs and an
            unfolded BatchNormalization stay int8 only (an error names them).
        weight_bits: 8 or 4 (int4 weights, symmetric per channel, levels -7..7;
            the converter stores them as INT4 tensors). Only weighted layers
            (Conv2D, DepthwiseConv2D, Dense and the compact layers lowered to them)
            take 4 bits; AdderConv / AdderDense stay at 8 (an error names them).
        range_learning: how activation ranges are found: "ema" (moving average
            of batch min / max, as TF and tfmot), "lsq" (a trained step size,
            Esser et al. 2020) or "pact" (a trained clipping level, Choi et al.
            2018); see `ActivationQuantizer`. Learned ranges start at the first
            training batch (not `init_range`); the model input's range and the
            steps of AdderConv / an unfolded BatchNormalization stay "ema".

    Returns:
        A new functional `keras.Model` (uncompiled) with the model's input and
        output structure, whose weights start equal to `model`'s.

    Raises:
        ValueError: for a subclassed model (QAT rebuilds the graph: the message
            says what to do instead), an unbuilt model, or a layer that cannot be
            quantized (named, with the supported list).

    Example:
        >>> qat = quantize_model(model)
        >>> qat.compile("adam", "sparse_categorical_crossentropy")
        >>> qat.fit(x, y, epochs=1)
        >>> tflite = tfcompress.export.to_tflite(qat, mode="int8")
    """
    if is_subclassed(model):
        raise ValueError(
            f"quantize_model needs a functional or Sequential model: quantization-aware "
            f"training rebuilds the model's graph, and subclassed model {model.name!r} "
            f"({type(model).__name__}) has none. Build the same network with the "
            "functional API (keras.Input -> layers -> keras.Model(inputs, outputs)) and "
            "copy the weights, or use post-training quantization, "
            "tfcompress.export.to_tflite(model, representative_data), which works for "
            "subclassed models."
        )
    check_model(model, "quantize_model")
    activation_bits = check_bits("activation_bits", activation_bits, ACTIVATION_BITS)
    weight_bits = check_bits("weight_bits", weight_bits, WEIGHT_BITS)
    if range_learning not in RANGE_LEARNING:
        raise ValueError(
            f"`range_learning` must be one of {', '.join(map(repr, RANGE_LEARNING))}. "
            f"Received: range_learning={range_learning!r}"
        )
    graph = ModelGraph(model)
    # Annotations are looked up by name: lowering copies the layers.
    schemes = {
        graph.name_of(layer): annotation_of(layer) for layer in graph.layers
        if annotation_of(layer) is not None
    }
    lowered = ModelGraph(lower_model(model))
    plan = plan_fusions(lowered, fold_batchnorm, schemes)
    shared_quantizers = {}  # Concatenate name -> its ActivationQuantizer

    def concat_quantizer(concat_name):
        if concat_name not in shared_quantizers:
            shared_quantizers[concat_name] = ActivationQuantizer(
                ema_decay, init_range=init_range, num_bits=activation_bits,
                range_learning=range_learning, name=f"quant_{concat_name}",
            )
        return shared_quantizers[concat_name]

    def share(name, out):
        """Quantizes a tensor that also feeds a Concatenate with that concat's range."""
        return concat_quantizer(plan.concat_shared[name])(out, update_range=False)

    made = {}  # name -> the QAT layer of a layer (made at its first call: shared stays shared)

    def once(name, make, args, kwargs, weights=()):
        """Calls the QAT layer made for `name`, making it (and copying weights) the first time."""
        first = name not in made
        if first:
            made[name] = make()
        out = made[name](*args, **kwargs)
        if first:
            for source, target in weights(made[name]) if callable(weights) else weights:
                _copy_weights(source, target)
        return out

    def node_fn(node, args, kwargs, state):
        original = node.layer
        name = original.name
        scheme = schemes.get(name)
        role = quantization_role(original)
        if name in plan.absorbed:
            return args[0]
        if node.training is not None and "training" not in kwargs:
            # The training flag a nested model's call passed on (Keras applies it when the
            # model is called without one) reaches the QAT layers too.
            kwargs = dict(kwargs, training=node.training)
        if name in plan.fused:
            bn, act, quantize_output = plan.fused[name]
            out = once(
                name,
                lambda: QuantizeWrapper(
                    fresh_copy(original),
                    batchnorm=None if bn is None else fresh_copy(bn),
                    activation=act,
                    quantize_output=quantize_output,
                    per_channel=per_channel if scheme is None else scheme == "per_channel",
                    ema_decay=ema_decay,
                    init_range=init_range,
                    activation_bits=activation_bits,
                    weight_bits=weight_bits,
                    range_learning=range_learning,
                    name=f"quant_{name}",
                ),
                args, kwargs,
                lambda w: [(original, w.layer)] + ([] if bn is None else [(bn, w.batchnorm)]),
            )
            return share(name, out) if name in plan.concat_shared else out
        if role in ("adder", "batchnorm") and scheme != "float" and (
                activation_bits != 8 or (weight_bits != 8 and role == "adder")):
            raise ValueError(
                f"Layer {name!r} ({type(original).__name__}) quantizes at 8 bits only: "
                f"activation_bits={activation_bits}, weight_bits={weight_bits} cover the "
                "weighted layers. Keep it float with quantize_annotate_layer(layer, "
                "'float'), fold the BatchNormalization into a conv, or use the defaults."
            )
        if role == "adder" and scheme != "float":
            return once(
                name,
                lambda: QuantizeAdderWrapper(  # ranges from the data (init_range above)
                    fresh_copy(original), ema_decay, init_range=None, name=f"quant_{name}"
                ),
                args, kwargs, lambda w: [(original, w.layer)],
            )
        if role == "batchnorm" and scheme != "float":
            out = once(
                name,
                lambda: QuantizeBatchNorm(
                    fresh_copy(original), plan.batchnorm_activations.get(name, "linear"),
                    ema_decay, init_range=init_range, name=f"quant_{name}",
                    quantize_output=name not in plan.concat_fed and name not in plan.concat_shared,
                ),
                args, kwargs, lambda w: [(original, w.layer)],
            )
            return share(name, out) if name in plan.concat_shared else out
        out = state.call(node, args, kwargs)
        if scheme == "float" or is_scale_preserving(original) or name in plan.concat_fed:
            return out
        if role == "output":
            act = activation_of(original)
            fixed = FIXED_RANGE if act in FIXED_RANGE_ACTIVATIONS else None
            if isinstance(original, Sign):
                if activation_bits != 8:
                    raise ValueError(
                        f"Layer {name!r} binarizes its input (Sign: GREATER_EQUAL + "
                        "SELECT_V2), which TFLite's 16x8 mode does not run: use "
                        "activation_bits=8 for this model."
                    )
                fixed = SIGN_RANGE
            if isinstance(original, layers.Concatenate):
                return concat_quantizer(name)(out)
            if name in plan.concat_shared and fixed is None:
                return share(name, out)
            return once(
                f"quant_{name}",
                lambda: ActivationQuantizer(
                    ema_decay, fixed_range=fixed, name=f"quant_{name}",
                    quantize_in_training=act not in FIXED_RANGE_ACTIVATIONS,
                    init_range=init_range, num_bits=activation_bits,
                    range_learning=range_learning,
                ),
                (out,), {} if node.training is None else {"training": node.training},
            )
        raise ValueError(
            f"Cannot quantize layer {name!r} of type {type(original).__name__}. "
            f"Supported: {', '.join(supported_layer_names())}. Keep it float with "
            "quantize_annotate_layer(layer, 'float') or replace it."
        )

    several = len(lowered.inputs) > 1

    def input_fn(tensor, keras_input):
        # The input's range is the data's: it starts at the first batch either way.
        name = f"quant_{tensor.name}" if several else "quant_input"
        return ActivationQuantizer(ema_decay, num_bits=activation_bits, name=name)(keras_input)

    return rebuild(
        lowered, node_fn=node_fn, input_fn=input_fn, name=f"{lowered.model.name}_qat",
        keep_sequential=False,
    )
