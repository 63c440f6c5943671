"""TensorFlow Lite Micro: run a file on TFLM's kernels, check its ops, size its arena.

Microcontrollers run TensorFlow Lite Micro (TFLM), whose reference kernels are not
LiteRT's. The `tflite-micro` package (`pip install tfcompress[micro]`) runs TFLM
from Python: `MicroRunner` ("micro" in `run_tflite` and `verify`) runs a file on
it, `check_micro` lists the file's operators TFLM has no kernel for before
anything runs, and `micro_arena_size` finds the smallest tensor arena the file
allocates and invokes in (what a firmware declares as `uint8_t arena[N]`).

TFLM runs integer-only files (`check_integer_only`) of a fixed batch: a file with
a batch of 1 runs example by example.

Example:
    >>> check_micro(tflite_bytes)
    []
    >>> micro_arena_size(tflite_bytes)
    12352
    >>> probs, raw = run_tflite(tflite_bytes, x_test[:100], runner="micro")
"""

import functools
import hashlib
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from tfcompress.export.checks import check_integer_only
from tfcompress.export.runners import Runner, register_runner

__all__ = [
    "ARENA_ALIGNMENT",
    "MicroRunner",
    "check_micro",
    "micro_arena_size",
    "micro_ops",
]

# TFLM aligns every buffer in the arena to 16 bytes; arena sizes are multiples of it.
ARENA_ALIGNMENT = 16
# micro_arena_size gives up above this (1 GiB): no microcontroller has that much RAM.
_MAX_ARENA = 1 << 30

_INSTALL_HINT = (
    "The micro runner needs the `tflite-micro` package: pip install tfcompress[micro] "
    "(or pip install tflite-micro)."
)


def _runtime():
    """`tflite_micro.runtime`, or ImportError saying what to install."""
    try:
        from tflite_micro import runtime
    except ImportError as err:
        raise ImportError(f"{_INSTALL_HINT} ({err})") from err
    return runtime


@functools.lru_cache(maxsize=1)
def micro_ops():
    """The builtin operators the installed TFLM registers, e.g. {"CONV_2D", ...}.

    Read from the `tflite-micro` extension itself: every kernel is registered by a
    C++ function `tflite::Register_<OP>()` (or `tflite::micro::...`), whose
    mangled name (`..<length>Register_<OP>Ev`) is in the library's symbol table. So the
    list follows the installed version, whatever it adds.

    Returns:
        A frozenset of operator names as LiteRT spells them.

    Raises:
        ImportError: when `tflite-micro` is not installed.
        RuntimeError: when the extension lists no kernel (an unknown build).
    """
    runtime = _runtime()
    folder = os.path.dirname(runtime.__file__)
    names = set()
    for entry in os.listdir(folder):
        if entry.startswith("_runtime") and entry.endswith(".so"):
            with open(os.path.join(folder, entry), "rb") as f:
                data = f.read()
            for match in re.finditer(rb"(?<![0-9])([0-9]+)Register_", data):
                length = int(match.group(1)) - len("Register_")
                start = match.end()
                name = data[start:start + length].decode("ascii", "replace")
                if re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                    names.add(name)
    if not names:
        raise RuntimeError(
            f"Found no TFLM kernel registrations in {folder}: is this a tflite-micro build?"
        )
    return frozenset(names)


def _op_names(tflite_bytes):
    """The file's operator names, in execution order (LiteRT reads the file)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(tflite_bytes))
    return [op["op_name"] for op in interpreter._get_ops_details()]


def check_micro(tflite_bytes):
    """The operators of a file that TFLM has no kernel for, by name.

    Nothing runs: the file's operators are read and compared with the kernels the
    installed `tflite-micro` registers (`micro_ops`).

    Args:
        tflite_bytes: the `.tflite` contents.

    Returns:
        A sorted list of operator names TFLM lacks (empty when every operator has
        a kernel), e.g. `["GELU"]`.

    Raises:
        ImportError: when `tflite-micro` is not installed (says what to install).
        ValueError: for bytes that are not a TFLite file.

    Example:
        >>> check_micro(to_tflite(model, x))
        []
    """
    _check_bytes(tflite_bytes)
    supported = micro_ops()
    try:
        names = _op_names(tflite_bytes)
    except ValueError as err:
        raise ValueError(f"Not a TFLite file LiteRT can read: {err}") from err
    return sorted({n for n in names if n not in supported})


def _check_bytes(tflite_bytes):
    if not isinstance(tflite_bytes, (bytes, bytearray)) or not tflite_bytes:
        raise ValueError(
            "`tflite_bytes` must be the non-empty contents of a .tflite file. "
            f"Received: {type(tflite_bytes).__name__}"
        )


# Runs one file in one arena size, in a child process: TFLM's allocator crashes the
# process (a segmentation fault, not an error) for some arenas just too small.
_CHILD = r"""
import sys
import numpy as np
from tflite_micro import runtime
with open(sys.argv[1], "rb") as f:
    interpreter = runtime.Interpreter.from_bytes(f.read(), arena_size=int(sys.argv[2]))
i = 0
while True:
    try:
        detail = interpreter.get_input_details(i)
    except (IndexError, RuntimeError, ValueError):
        break
    interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), i)
    i += 1
interpreter.invoke()
interpreter.print_allocations()
"""

# {(sha256 of the file, arena size): (fits, TFLM's output)} and {sha256: arena size}.
_FITS = {}
_ARENAS = {}


def _digest(tflite_bytes):
    return hashlib.sha256(bytes(tflite_bytes)).hexdigest()


def _fits(tflite_bytes, path, size):
    """(True when the file allocates and runs in `size` bytes, TFLM's output)."""
    key = (_digest(tflite_bytes), size)
    if key not in _FITS:
        try:
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, path, str(size)],
                capture_output=True, text=True, timeout=600, check=False,
            )
            _FITS[key] = (done.returncode == 0, (done.stdout + done.stderr).strip())
        except subprocess.TimeoutExpired:
            _FITS[key] = (False, "TFLM did not finish in 600 s")
    return _FITS[key]


def _tflm_says(output):
    """TFLM's own error lines of a child's output (its Python traceback left out)."""
    lines = [line for line in output.splitlines()
             if line.strip() and not line.startswith(("Traceback", "  ", "RuntimeError"))]
    return "; ".join(lines[-3:]) or "no message"


def micro_arena_size(tflite_bytes):
    """The smallest tensor arena (bytes, a multiple of 16) the file allocates and runs in.

    A search over arena sizes: each candidate builds a TFLM interpreter (which
    plans every tensor into the arena) and invokes it once, in a child process
    (TFLM's allocator crashes the process on some arenas just too small). The
    arena TFLM records for a run that fits bounds the search from below, so it
    takes about ten tries. Results are cached per file.

    Args:
        tflite_bytes: the `.tflite` contents.

    Returns:
        The arena size in bytes (`ARENA_ALIGNMENT`-aligned); 16 bytes less does not
        allocate or does not run.

    Raises:
        ImportError: when `tflite-micro` is not installed.
        ValueError: when the file uses operators TFLM lacks (named), or does not
            run in any arena up to 1 GiB (TFLM's message is included).

    Example:
        >>> micro_arena_size(tflite_bytes)
        5696
    """
    missing = check_micro(tflite_bytes)
    if missing:
        raise ValueError(_missing_message(missing))
    digest = _digest(tflite_bytes)
    if digest in _ARENAS:
        return _ARENAS[digest]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as f:
            f.write(bytes(tflite_bytes))
        high = _aligned(max(4096, 2 * len(tflite_bytes)))
        while True:
            fits, output = _fits(tflite_bytes, path, high)
            if fits:
                break
            if high >= _MAX_ARENA:
                raise ValueError(
                    f"TFLM cannot run this file in any arena up to {_MAX_ARENA} bytes: "
                    f"{_tflm_says(output)}"
                )
            high *= 2
        recorded = re.search(r"Arena allocation total (\d+) bytes", output)
        low = _aligned(int(recorded.group(1))) - ARENA_ALIGNMENT if recorded else 0
        if low <= 0 or _fits(tflite_bytes, path, low)[0]:
            low = 0  # an empty arena never allocates
        while high - low > ARENA_ALIGNMENT:
            middle = _aligned((low + high) // 2)
            if middle >= high:
                middle -= ARENA_ALIGNMENT
            if _fits(tflite_bytes, path, middle)[0]:
                high = middle
            else:
                low = middle
    _ARENAS[digest] = high
    return high


def _aligned(size):
    """`size` rounded up to a multiple of ARENA_ALIGNMENT."""
    return -(-size // ARENA_ALIGNMENT) * ARENA_ALIGNMENT


def _arena_fits(tflite_bytes, size):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as f:
            f.write(bytes(tflite_bytes))
        return _fits(tflite_bytes, path, size)


def _missing_message(missing):
    return (
        f"TFLM has no kernel for operator(s) {', '.join(missing)} of this file: "
        "keep the layers that make them out of the model, or replace them (for "
        "instance gelu -> relu); check_micro(tflite) lists them."
    )


class MicroRunner(Runner):
    """TensorFlow Lite Micro's interpreter (`tflite-micro`), reference kernels.

    Inputs and outputs are named as LiteRT names them (the file's serving
    signature). TFLM cannot resize inputs: a file exported with a batch of 1 runs
    example by example.

    Args:
        tflite_bytes: an integer-only `.tflite` file whose operators TFLM has.
        arena_size: tensor arena in bytes; None takes the smallest that runs
            (`micro_arena_size`).

    Raises:
        ImportError: when `tflite-micro` is not installed (`pip install tfcompress[micro]`).
        ValueError: for a float file or a float operator (named, with its layer),
            operators TFLM lacks (named), or an arena too small (with the size needed).

    Example:
        >>> runner = MicroRunner(tflite_bytes)
        >>> runner.run({"image": x_int8})[0].shape
        (8, 10)
    """

    name = "micro"

    def __init__(self, tflite_bytes, arena_size=None):
        super().__init__(tflite_bytes)
        if arena_size is not None and (
            isinstance(arena_size, bool) or not isinstance(arena_size, int) or arena_size <= 0
        ):
            raise ValueError(
                f"`arena_size` must be a positive number of bytes or None. "
                f"Received: arena_size={arena_size!r}"
            )
        _runtime()  # the install hint before any other check
        missing = check_micro(self.tflite_bytes)
        if missing:
            raise ValueError(_missing_message(missing))
        try:
            check_integer_only(self.tflite_bytes)
        except ValueError as err:
            raise ValueError(
                f"The micro runner runs integer-only files (microcontrollers have no "
                f"float kernels worth using): {err}"
            ) from err
        if arena_size is None:
            arena_size = micro_arena_size(self.tflite_bytes)
        else:
            fits, output = _arena_fits(self.tflite_bytes, arena_size)
            if not fits:
                needed = micro_arena_size(self.tflite_bytes)
                if arena_size < needed:
                    raise ValueError(
                        f"arena_size={arena_size} bytes is too small for this file: TFLM "
                        f"needs {needed} bytes (micro_arena_size(tflite)). TFLM said: "
                        f"{_tflm_says(output)}"
                    )
        # Only sizes a child process ran: TFLM crashes on some arenas just too small.
        self.interpreter = _runtime().Interpreter.from_bytes(
            self.tflite_bytes, arena_size=arena_size
        )
        self.arena_size = arena_size
        self._positions = self._signature_positions()

    def _signature_positions(self):
        """{name: position in the subgraph's inputs/outputs}, filling the details."""
        from ai_edge_litert.interpreter import Interpreter

        lite = Interpreter(model_content=self.tflite_bytes)
        input_index = [d["index"] for d in lite.get_input_details()]
        output_index = [d["index"] for d in lite.get_output_details()]
        signatures = lite.get_signature_list()
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            runner = lite.get_signature_runner(key)
            inputs = dict(sorted(runner.get_input_details().items()))
            outputs = dict(runner.get_output_details())
        else:
            inputs = {f"input_{i}": d for i, d in enumerate(lite.get_input_details())}
            outputs = {f"output_{i}": d for i, d in enumerate(lite.get_output_details())}
        positions = {}
        for kind, details, order in (("input", inputs, input_index),
                                     ("output", outputs, output_index)):
            get = (self.interpreter.get_input_details if kind == "input"
                   else self.interpreter.get_output_details)
            target = self.input_details if kind == "input" else self.output_details
            for name, detail in details.items():
                position = order.index(detail["index"])
                micro = get(position)
                target[name] = {
                    "shape": np.array([int(d) for d in micro["shape"]]),
                    "dtype": micro["dtype"],
                    "quantization": tuple(detail["quantization"]),
                }
                positions[kind, name] = position
        return positions

    def _invoke(self, inputs):
        counts = {len(v) for v in inputs.values()}
        (count,) = counts if len(counts) == 1 else (None,)
        batch = {int(d["shape"][0]) for d in self.input_details.values()}
        if count is None or len(batch) != 1:
            raise ValueError(f"Every input needs the same number of examples. Received: {counts}")
        (batch,) = batch
        if count % batch:
            raise ValueError(
                f"This file runs {batch} examples at a time on TFLM; got {count}."
            )
        outputs = {name: [] for name in self.output_details}
        for start in range(0, count, batch):
            for name, value in inputs.items():
                detail = self.input_details[name]
                chunk = np.ascontiguousarray(value[start:start + batch], dtype=detail["dtype"])
                if chunk.shape != tuple(detail["shape"]):
                    raise ValueError(
                        f"Input {name!r} of the file has shape {tuple(detail['shape'])}; "
                        f"got examples of shape {chunk.shape[1:]}."
                    )
                self.interpreter.set_input(chunk, self._positions["input", name])
            self.interpreter.invoke()
            for name in self.output_details:
                outputs[name].append(
                    np.array(self.interpreter.get_output(self._positions["output", name]))
                )
        return {name: np.concatenate(parts) for name, parts in outputs.items()}


register_runner("micro", MicroRunner)
