"""Batch latency of a `.tflite` file in LiteRT, on random inputs of its own dtypes."""

import time

import numpy as np

__all__ = ["measure_latency", "random_inputs"]


def random_inputs(details, rng, batch=1):
    """One random array per input detail: integers over their range (small for wide
    integers, which are usually indices), floats uniform in [0, 1)."""
    out = []
    for detail in details:
        shape = [batch] + [int(d) for d in detail["shape"][1:]]
        dtype = np.dtype(detail["dtype"])
        if dtype == np.bool_:
            out.append(rng.integers(0, 2, size=shape).astype(np.bool_))
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            high = info.max if info.bits <= 16 else 10
            low = info.min if info.bits <= 16 else 0
            out.append(rng.integers(low, high, size=shape, endpoint=True).astype(dtype))
        else:
            out.append(rng.random(size=shape).astype(dtype))
    return out


def measure_latency(tflite_bytes, runs=100, warmup=10, threads=1, batch=1, seed=0):
    """Times `invoke()` of a file in LiteRT's interpreter (default delegates: XNNPACK).

    Args:
        tflite_bytes: the file's contents.
        runs: timed invocations (each one sample).
        warmup: untimed invocations first.
        threads: interpreter threads.
        batch: batch size of every input.
        seed: seed of the random inputs.

    Returns:
        {"median_ms", "p10_ms", "p90_ms", "min_ms", "runs", "threads", "batch"}.

    Raises:
        ValueError: for a non-positive `runs`, `threads` or `batch`.

    Example:
        >>> measure_latency(to_tflite(model, mode="float32"))["median_ms"]
    """
    from ai_edge_litert.interpreter import Interpreter

    for name, value in (("runs", runs), ("threads", threads), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    interpreter = Interpreter(model_content=bytes(tflite_bytes), num_threads=threads)
    details = interpreter.get_input_details()
    for detail in details:
        if int(detail["shape"][0]) != batch:
            interpreter.resize_tensor_input(detail["index"], [batch] + list(detail["shape"][1:]))
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    for detail, value in zip(details, random_inputs(details, np.random.default_rng(seed), batch)):
        interpreter.set_tensor(detail["index"], value)
    for _ in range(max(0, warmup)):
        interpreter.invoke()
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        interpreter.invoke()
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return {
        "median_ms": float(np.median(times)), "p10_ms": float(np.percentile(times, 10)),
        "p90_ms": float(np.percentile(times, 90)), "min_ms": float(times.min()),
        "runs": runs, "threads": threads, "batch": batch,
    }
