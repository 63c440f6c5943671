"""Running a `.tflite` file: one interface, with LiteRT (the phone runtime) behind it.

A `Runner` takes the file's bytes and runs it on raw tensors (the file's own dtypes),
inputs and outputs addressed by the names of the file's serving signature, which
are the Keras model's input names and `output_0`, `output_1`, ... (or the keys of a
dict output). `Runner.output_names` lists the outputs in the Keras model's flat
output order (`model.outputs`), so results line up with `model.predict`.
`run_tflite` wraps a runner with the float <-> int8 conversion at the boundary.

Runners are registered by name (`register_runner`): "litert" is LiteRT's
interpreter (`ai-edge-litert`) with its default delegate (XNNPACK), "litert_ref"
the same interpreter on its reference kernels (`BUILTIN_REF`), and "micro"
TensorFlow Lite Micro (`tfcompress.export.micro`, `pip install tfcompress[micro]`).

Example:
    >>> runner = get_runner("litert")(tflite_bytes)
    >>> runner.input_names, runner.output_names
    (['image'], ['output_0'])
    >>> outputs = runner.run({"image": x_int8})
"""

import re

import numpy as np

__all__ = [
    "LiteRTReferenceRunner",
    "LiteRTRunner",
    "Runner",
    "dequantize",
    "get_runner",
    "quantize",
    "register_runner",
    "run_tflite",
    "runner_names",
]

_RUNNERS = {}


def register_runner(name, runner_class):
    """Registers a `Runner` subclass under `name` (e.g. "litert").

    Args:
        name: a non-empty string.
        runner_class: a subclass of `Runner`.

    Returns:
        `runner_class`.

    Raises:
        ValueError: for an empty name or a class that is not a Runner.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string. Received: name={name!r}")
    if not (isinstance(runner_class, type) and issubclass(runner_class, Runner)):
        raise ValueError(  # noqa: TRY004
            f"`runner_class` must be a subclass of Runner. Received: {runner_class!r}"
        )
    _RUNNERS[name] = runner_class
    return runner_class


def runner_names():
    """The registered runner names."""
    return sorted(_RUNNERS)


def get_runner(name):
    """The runner class registered as `name`.

    Raises:
        ValueError: for an unknown name (the known ones are listed).
    """
    if name not in _RUNNERS:
        raise ValueError(
            f"`runner` must be one of {', '.join(map(repr, runner_names()))}. "
            f"Received: runner={name!r}"
        )
    return _RUNNERS[name]


def _output_order(names):
    """Keras' flat output order: output_0, output_1, ... by number, else sorted keys."""
    numbered = [re.fullmatch(r"output_(\d+)", n) for n in names]
    if all(numbered):
        return [n for _, n in sorted(zip((int(m.group(1)) for m in numbered), names))]
    return sorted(names)


class Runner:
    """Runs a TFLite flatbuffer (base class of the runtimes).

    Subclasses fill `input_details` / `output_details` ({name: detail} with
    "shape", "dtype" and "quantization" = (scale, zero_point)) and implement
    `_invoke(inputs) -> {name: array}`.

    Attributes:
        input_names: input names, in the file's signature order.
        output_names: output names, in the Keras model's flat output order.
    """

    name = None

    def __init__(self, tflite_bytes):
        if not isinstance(tflite_bytes, (bytes, bytearray)) or not tflite_bytes:
            raise ValueError(
                "`tflite_bytes` must be the non-empty contents of a .tflite file. "
                f"Received: {type(tflite_bytes).__name__}"
            )
        self.tflite_bytes = bytes(tflite_bytes)
        self.input_details = {}
        self.output_details = {}

    @property
    def input_names(self):
        return list(self.input_details)

    @property
    def output_names(self):
        return _output_order(list(self.output_details))

    def inputs_by_name(self, data):
        """{input name: array} from an array (one input), a dict or a list.

        A list is in `input_names` order.

        Raises:
            ValueError: when the data does not match the file's inputs (named).
        """
        names = self.input_names
        if isinstance(data, dict):
            missing = sorted(set(names) - set(data))
            extra = sorted(set(data) - set(names))
            if missing or extra:
                raise ValueError(
                    f"The file's inputs are {names}; the data has {sorted(data)} "
                    f"(missing {missing}, unknown {extra})."
                )
            return {n: data[n] for n in names}
        if isinstance(data, (list, tuple)):
            if len(data) != len(names):
                raise ValueError(
                    f"The file has {len(names)} inputs {names}; got a list of {len(data)}."
                )
            return dict(zip(names, data))
        if len(names) != 1:
            raise ValueError(
                f"The file has {len(names)} inputs {names}: pass a dict {{name: array}} "
                "or a list in that order."
            )
        return {names[0]: data}

    def run(self, inputs):
        """Runs the file once on raw inputs.

        Args:
            inputs: {input name: array in the file's dtype and shape (any batch)},
                or what `inputs_by_name` takes.

        Returns:
            A list of raw output arrays in `output_names` order.
        """
        outputs = self._invoke(self.inputs_by_name(inputs))
        return [np.asarray(outputs[n]) for n in self.output_names]

    def _invoke(self, inputs):
        raise NotImplementedError(f"{type(self).__name__} must implement _invoke")


class LiteRTRunner(Runner):
    """LiteRT's interpreter (`ai_edge_litert.interpreter`), default delegates.

    Files with a serving signature run through its signature runner (inputs
    resized to the batch given); files without one by tensor position.
    """

    name = "litert"
    # Which of LiteRT's kernel sets runs the file (an `OpResolverType` name).
    op_resolver = "AUTO"

    def __init__(self, tflite_bytes):
        super().__init__(tflite_bytes)
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.interpreter = Interpreter(
            model_content=self.tflite_bytes,
            experimental_op_resolver_type=getattr(OpResolverType, self.op_resolver),
        )
        signatures = self.interpreter.get_signature_list()
        self._signature = None
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            self._signature = self.interpreter.get_signature_runner(key)
            self.input_details = dict(sorted(self._signature.get_input_details().items()))
            self.output_details = dict(self._signature.get_output_details())
        else:
            self.input_details = {
                f"input_{i}": d for i, d in enumerate(self.interpreter.get_input_details())
            }
            self.output_details = {
                f"output_{i}": d for i, d in enumerate(self.interpreter.get_output_details())
            }

    def _invoke(self, inputs):
        if self._signature is not None:
            return self._signature(**inputs)
        interpreter = self.interpreter
        for name, value in inputs.items():
            interpreter.resize_tensor_input(self.input_details[name]["index"], list(value.shape))
        interpreter.allocate_tensors()
        for name, value in inputs.items():
            interpreter.set_tensor(self.input_details[name]["index"], value)
        interpreter.invoke()
        return {
            name: interpreter.get_tensor(detail["index"]).copy()
            for name, detail in self.output_details.items()
        }


class LiteRTReferenceRunner(LiteRTRunner):
    """LiteRT with its reference kernels (`OpResolverType.BUILTIN_REF`), no delegate.

    The kernels TFLM's are ported from: the yardstick for the micro runner.
    """

    name = "litert_ref"
    op_resolver = "BUILTIN_REF"


register_runner("litert", LiteRTRunner)
register_runner("litert_ref", LiteRTReferenceRunner)


def quantize(values, detail):
    """Float values in a tensor's dtype, with its (scale, zero point) if quantized."""
    scale, zero_point = detail["quantization"]
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32 or scale == 0:
        return np.asarray(values).astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(values, np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(values, detail):
    """A tensor's raw values as float32, with its (scale, zero point) if quantized."""
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]) == np.float32 or scale == 0:
        return np.asarray(values).astype(np.float32)
    return ((np.asarray(values).astype(np.float32) - zero_point) * scale).astype(np.float32)


def run_tflite(tflite_bytes, data, batch_size=256, runner="litert"):
    """Runs a TFLite model on float inputs.

    Quantized inputs and outputs are converted with the file's own scale and
    zero point, so the caller always passes and receives float32.

    Args:
        tflite_bytes: the flatbuffer contents.
        data: float inputs, (N, ...): an array for a file with one input, else a
            dict {input name: array} (the Keras model's input names) or a list in
            the runner's `input_names` order.
        batch_size: examples per invocation.
        runner: a registered runner name: "litert" (LiteRT, XNNPACK), "litert_ref"
            (LiteRT's reference kernels) or "micro" (TensorFlow Lite Micro); or a
            `Runner` already made for this file.

    Returns:
        (outputs_float32, raw_outputs) where raw_outputs keeps the file's dtype:
        arrays for a file with one output, else lists in the Keras model's flat
        output order.

    Raises:
        ValueError: for an unknown runner or data that does not match the inputs.

    Example:
        >>> probs, raw = run_tflite(tflite, x_test[:100])
    """
    run = runner if isinstance(runner, Runner) else get_runner(runner)(tflite_bytes)
    inputs = {n: np.asarray(v, np.float32) for n, v in run.inputs_by_name(data).items()}
    sizes = {len(v) for v in inputs.values()}
    if len(sizes) != 1:
        raise ValueError(f"Every input needs the same number of examples. Received: {sizes}")
    (count,) = sizes
    floats = [[] for _ in run.output_names]
    raws = [[] for _ in run.output_names]
    for start in range(0, count, batch_size):
        chunk = {
            n: quantize(v[start:start + batch_size], run.input_details[n])
            for n, v in inputs.items()
        }
        for i, (name, raw) in enumerate(zip(run.output_names, run.run(chunk))):
            raws[i].append(raw.copy())
            floats[i].append(dequantize(raw, run.output_details[name]))
    floats = [np.concatenate(parts) for parts in floats]
    raws = [np.concatenate(parts) for parts in raws]
    if len(floats) == 1:
        return floats[0], raws[0]
    return floats, raws
