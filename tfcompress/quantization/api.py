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
    activation_name,
    check_bits,
)
from tfcompress.quantization.roles import (
    is_scale_preserving,
    quantization_role,
    supported_layer_names,
)
from tfcompress.quantization.wrappers import (
    BATCH_STATISTICS,
    QuantizeAdderWrapper,
    QuantizeBatchNorm,
    QuantizeWrapper,
)

__all__ = ["PRECISIONS", "float_boundaries", "float_layers", "int16_layers", "quantize_model"]


PRECISIONS = (8, "auto")


def _copy_weights(source, target):
    target.set_weights(source.get_weights())


def quantize_model(
    model, per_channel=True, fold_batchnorm=True, ema_decay=0.999, init_range=(-6.0, 6.0),
    *, activation_bits=8, weight_bits=8, range_learning="ema", batch_statistics="quantized",
    precision=8, max_accuracy_drop=0.01, data=None, verbose=1,
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
        batch_statistics: where a folded BatchNormalization's batch statistics
            come from in training: "float" (an extra pass with the float
            kernel: the forward pass is exactly conv-then-BN) or "quantized"
            (the quantized pass itself, one convolution per step instead of two;
            see `QuantizeWrapper`). Inference and the file are the same.
        precision: 8 (every layer int8, unless `quantize_annotate_layer` says
            otherwise) or "auto": mixed precision from
            `tfcompress.analysis.quantization_sensitivity(model, data)`: each
            weighted layer's accuracy drop when it alone is int8 is measured (no
            training), the most sensitive layers are kept out of int8 until the
            drops of the int8 layers add up to at most `max_accuracy_drop`
            (`choose_float_layers`), and each of those is made 16x8 where the
            whole mixed model, measured, stays within the budget, else float
            (`choose_precisions`). `to_tflite(qat, mode="int8")` then writes a
            file that mixes int8, 16x8 and float operators; `int16_layers(qat)`
            and `float_layers(qat)` list them.
        max_accuracy_drop: the budget of precision="auto", in [0, 1) (0.01 =
            one point of top-1 accuracy on `data`).
        data: (x, y) for precision="auto": inputs and integer labels the
            sensitivity is measured on (a validation split).
        verbose: 1 for precision="auto"'s progress bars and the layers it keeps
            at 16 bits or float, 0 for silence.

    Returns:
        A new functional `keras.Model` (uncompiled) with the model's input and
        output structure, whose weights start equal to `model`'s.

    Raises:
        ValueError: for a subclassed model (QAT rebuilds the graph: the message
            says what to do instead), an unbuilt model, a layer that cannot be
            quantized (named, with the supported list), an unknown precision,
            precision="auto" without data or with activation_bits=16, or a budget
            outside [0, 1).

    Example:
        >>> qat = quantize_model(model)
        >>> qat.compile("adam", "sparse_categorical_crossentropy")
        >>> qat.fit(x, y, epochs=1)
        >>> tflite = tfcompress.export.to_tflite(qat, mode="int8")
        >>> mixed = quantize_model(model, precision="auto", max_accuracy_drop=0.005,
        ...                        data=(x_val, y_val))
        >>> float_layers(mixed)          # the layers the int8 file keeps float
        ['conv1']
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
    if batch_statistics not in BATCH_STATISTICS:
        raise ValueError(
            f"`batch_statistics` must be one of {', '.join(map(repr, BATCH_STATISTICS))}. "
            f"Received: batch_statistics={batch_statistics!r}"
        )
    if isinstance(precision, bool) or precision not in PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {', '.join(map(repr, PRECISIONS))}. "
            f"Received: precision={precision!r}"
        )
    if precision == "auto":
        return _mixed_precision(
            model, max_accuracy_drop, data, verbose, per_channel=per_channel,
            fold_batchnorm=fold_batchnorm, ema_decay=ema_decay, init_range=init_range,
            activation_bits=activation_bits, weight_bits=weight_bits,
            range_learning=range_learning, batch_statistics=batch_statistics,
        )
    graph = ModelGraph(model)
    # Annotations are looked up by name: lowering copies the layers.
    schemes = {
        graph.name_of(layer): annotation_of(layer) for layer in graph.layers
        if annotation_of(layer) is not None
    }
    if activation_bits == 16:  # every layer is 16x8 already
        schemes = {name: s for name, s in schemes.items() if s != 16}
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

    def output_quantizer(name, original, out, node, fixed=None):
        """`out` through the ActivationQuantizer "quant_<name>" (softmax / sigmoid:
        their fixed range, not quantized in training)."""
        act = activation_of(original) or activation_name(getattr(original, "activation", None))
        if fixed is None and act in FIXED_RANGE_ACTIVATIONS:
            fixed = FIXED_RANGE
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
        if name in plan.floated:  # kept float; quantized again where int8 layers take it
            out = state.call(node, args, kwargs)
            if name not in plan.float_outputs:
                return out
            if name in plan.concat_shared:
                return share(name, out)
            return output_quantizer(name, original, out, node)
        if name in plan.fused:
            bn, act, quantize_output = plan.fused[name]
            wide = name in plan.wide  # 16x8: int16 output, int8 weights
            out = once(
                name,
                lambda: QuantizeWrapper(
                    fresh_copy(original),
                    batchnorm=None if bn is None else fresh_copy(bn),
                    activation=act,
                    quantize_output=quantize_output,
                    per_channel=per_channel if scheme in (None, 16) else (
                        scheme == "per_channel"),
                    ema_decay=ema_decay,
                    init_range=init_range,
                    activation_bits=16 if wide else activation_bits,
                    weight_bits=8 if wide else weight_bits,
                    range_learning=range_learning,
                    batch_statistics=batch_statistics,
                    name=f"quant_{name}",
                ),
                args, kwargs,
                lambda w: [(original, w.layer)] + ([] if bn is None else [(bn, w.batchnorm)]),
            )
            if name in plan.wide_outputs:  # int16 -> int8 where the 8-bit layers take it
                return once(
                    f"requant_{name}",
                    lambda: ActivationQuantizer(
                        ema_decay, init_range=init_range, range_learning=range_learning,
                        name=f"requant_{name}",
                    ),
                    (out,), {} if node.training is None else {"training": node.training},
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
            if isinstance(original, Sign):
                if activation_bits != 8:
                    raise ValueError(
                        f"Layer {name!r} binarizes its input (Sign: GREATER_EQUAL + "
                        "SELECT_V2), which TFLite's 16x8 mode does not run: use "
                        "activation_bits=8 for this model."
                    )
                return output_quantizer(name, original, out, node, fixed=SIGN_RANGE)
            if isinstance(original, layers.Concatenate):
                return concat_quantizer(name)(out)
            if name in plan.concat_shared and activation_of(original) not in (
                    FIXED_RANGE_ACTIVATIONS):
                return share(name, out)
            return output_quantizer(name, original, out, node)
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


def _mixed_precision(model, max_accuracy_drop, data, verbose, **quantize_kwargs):
    """quantize_model(precision="auto"): the most sensitive layers at 16 bits or float."""
    from tfcompress.quantization.sensitivity import (
        annotated,
        check_accuracy_budget,
        choose_precisions,
        quantization_sensitivity,
    )

    check_accuracy_budget(max_accuracy_drop)
    if data is None:
        raise ValueError(
            "precision='auto' measures each layer's sensitivity on labelled data: pass "
            "data=(x, y), e.g. a validation split (integer labels)."
        )
    if quantize_kwargs["activation_bits"] != 8:
        raise ValueError(
            "precision='auto' keeps sensitive layers at 16 bits or float in an int8 file; "
            f"with activation_bits={quantize_kwargs['activation_bits']} every operator is "
            "already 16x8. Use activation_bits=8 with precision='auto'."
        )
    result = quantization_sensitivity(model, data, verbose=verbose, **quantize_kwargs)
    if verbose:
        each = ", ".join(f"{n} {100 * d:+.2f}" for n, d in result.drops.items())
        print(f"accuracy drop (pt) with each layer alone int8: {each}")
    chosen = choose_precisions(model, data, result, max_accuracy_drop, verbose=verbose,
                               **quantize_kwargs)
    graph = ModelGraph(model)
    with annotated({name: graph.layer_named(name) for name in chosen}, chosen):
        qat = quantize_model(model, **quantize_kwargs)
    if verbose:
        wide = ", ".join(n for n, p in chosen.items() if p == 16) or "none"
        kept = ", ".join(n for n, p in chosen.items() if p == "float") or "none"
        print(f"precision='auto' (budget {100 * max_accuracy_drop:.2f} pt): 16-bit: {wide}; "
              f"float: {kept}")
    return qat


def float_boundaries(qat_model, kept=None):
    """The quantizers right after the float layers of a QAT model.

    Args:
        qat_model: a model made by `quantize_model`.
        kept: its `float_layers`, if already known.

    Returns:
        {quantizer: [names of the float layers whose values it quantizes: the
        layer feeding it first, then the layers before that one]}, graph order.
    """
    kept = set(float_layers(qat_model) if kept is None else kept)
    graph = ModelGraph(qat_model)
    found = {}
    for node in graph.nodes:
        if not isinstance(node.layer, ActivationQuantizer) or len(node.inputs) != 1:
            continue
        chain, producer = [], node.inputs[0].producer
        while producer is not None and graph.name_of(producer.layer) in kept:
            chain.append(graph.name_of(producer.layer))
            inputs = producer.inputs
            producer = inputs[0].producer if len(inputs) == 1 else None
        if chain:
            found[node.layer] = chain
    return found


def float_layers(qat_model):
    """Names of the layers a QAT model computes in float (kept float by annotation).

    A weighted layer or BatchNormalization that `quantize_model` left unwrapped,
    and every layer computing only on their outputs before the next quantizer
    (the ReLU after a float conv). `to_tflite` keeps these float in the int8
    file, with a DEQUANTIZE before and a QUANTIZE after them.

    Args:
        qat_model: a model made by `quantize_model` (a float model: all its
            weighted layers are listed).

    Returns:
        The flat layer names, graph order (empty when everything is quantized).
    """
    quantizing = (ActivationQuantizer, QuantizeWrapper, QuantizeBatchNorm, QuantizeAdderWrapper)
    graph = ModelGraph(qat_model)
    found = []
    for node in graph.nodes:
        layer = node.layer
        if isinstance(layer, quantizing) or graph.name_of(layer) in found:
            continue
        producers = [t.producer for t in node.inputs]
        if quantization_role(layer) in ("weights", "batchnorm") or (producers and all(
                p is not None and graph.name_of(p.layer) in found for p in producers)):
            found.append(graph.name_of(layer))
    return found


def int16_layers(qat_model):
    """Names of the 16-bit layers of an int8 QAT model (`quantize_annotate_layer(layer, 16)`).

    Their `QuantizeWrapper`s have 16-bit activations while the model's own
    quantizers are int8; `to_tflite(qat, mode="int8")` writes them as TFLite's
    16x8 operators (int16 activations, int8 weights, int64 bias).

    Args:
        qat_model: a model made by `quantize_model`.

    Returns:
        The wrappers' names, graph order (empty for an all-int8 or all-16x8 model).
    """
    graph = ModelGraph(qat_model)
    bits = {node.layer.num_bits for node in graph.nodes
            if isinstance(node.layer, ActivationQuantizer)}
    if 8 not in bits:
        return []
    found = []
    for node in graph.nodes:
        name = graph.name_of(node.layer)
        if isinstance(node.layer, QuantizeWrapper) and node.layer.activation_bits == 16 and (
                name not in found):
            found.append(name)
    return found
