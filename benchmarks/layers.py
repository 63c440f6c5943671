"""Speed and cost of the tfcompress layers against a plain Conv2D, at equal shapes.

Every layer maps (N, size, size, C) -> (N, size, size, C) with a 3x3 spatial extent:

    Conv2D(3x3)                      the baseline
    GhostConv(kernel_size=3, ratio=2), GhostConv(kernel_size=1, ratio=2) (GhostNet's choice)
    ShiftConv(3)                     shift + 1x1 convolution
    AdderConv(3)                     default, and compiled with XLA (jit_compile=True)
    Conv2D(3x3) under XLA            the fair baseline for the XLA AdderConv
    BinaryConv(3)                    XNOR-Net, simulated in float
    SeparableConv2D(3x3)             depthwise-separable reference

For each one the benchmark measures, in one process, the forward pass and one training step
(forward + backward + SGD apply, all inside one `tf.function`; the backward pass computes the
input gradient too, as for a layer inside a network), excludes warm-up calls, takes
the median over `--repeats` samples and reports the ratio to Conv2D measured in the same run.
The layers are timed round-robin (each repeat times every layer once) so that load from other
processes falls on all of them alike. It also reports parameters, multiply-adds (and additions
for AdderConv, binary operations for BinaryConv) per image, from `tfcompress.profiling.profile`
when that module exists and otherwise from the formulas in `analytic_cost` (the report says
which), and checks two goals against the measured numbers:

    GhostConv(ratio=2) has about half the multiply-adds of Conv2D (ratio within 0.5 +- 0.05);
    an AdderConv training step is within 4x of a Conv2D training step.

Run (from the repository root):

    PYTHONPATH=. python3 benchmarks/layers.py                      # default, a few minutes on 2 cores
    PYTHONPATH=. python3 benchmarks/layers.py --quick              # smoke test, well under a minute
    PYTHONPATH=. python3 benchmarks/layers.py --output benchmarks/RESULTS.md

The report is markdown on stdout; `--output` also writes it into a file, replacing this
benchmark's section (between its BEGIN/END markers) or appending it if absent.
"""

import argparse
import datetime
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from tfcompress.layers import AdderConv, BinaryConv, GhostConv, ShiftConv

BEGIN_MARK = "<!-- BEGIN benchmarks/layers.py -->"
END_MARK = "<!-- END benchmarks/layers.py -->"

GHOST_MACS_TARGET, GHOST_MACS_TOLERANCE = 0.5, 0.05
ADDER_TRAIN_LIMIT = 4.0

# (key, label, builder(channels), jit_compile, baseline key)
VARIANTS = [
    ("conv", "Conv2D 3x3", lambda c: keras.layers.Conv2D(c, 3, padding="same"), False, "conv"),
    (
        "ghost3",
        "GhostConv(k=3, ratio=2)",
        lambda c: GhostConv(c, kernel_size=3, ratio=2),
        False,
        "conv",
    ),
    (
        "ghost1",
        "GhostConv(k=1, ratio=2)",
        lambda c: GhostConv(c, kernel_size=1, ratio=2),
        False,
        "conv",
    ),
    ("shift", "ShiftConv(3)", lambda c: ShiftConv(c, 3), False, "conv"),
    ("adder", "AdderConv(3)", lambda c: AdderConv(c, 3), False, "conv"),
    ("binary", "BinaryConv(3)", lambda c: BinaryConv(c, 3), False, "conv"),
    (
        "sep",
        "SeparableConv2D 3x3",
        lambda c: keras.layers.SeparableConv2D(c, 3, padding="same"),
        False,
        "conv",
    ),
    ("conv_xla", "Conv2D 3x3", lambda c: keras.layers.Conv2D(c, 3, padding="same"), True, "conv_xla"),
    ("adder_xla", "AdderConv(3)", lambda c: AdderConv(c, 3), True, "conv_xla"),
]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=None, help="batch size N (default 64; --quick: 8)")
    parser.add_argument("--size", type=int, default=None, help="height = width (default 32; --quick: 16)")
    parser.add_argument(
        "--channels", type=int, default=None, help="input = output channels C (default 64; --quick: 16)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed samples per layer (default 7; --quick: 3)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed calls after the tracing call (default 1)"
    )
    parser.add_argument(
        "--min-sample-time",
        type=float,
        default=0.2,
        help="a sample repeats a fast call until it lasts at least this many seconds (default 0.2)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: small shapes, few repeats (for CI)"
    )
    parser.add_argument(
        "--output", default=None, help="markdown file to write this benchmark's section into"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        defaults = {"batch": 8, "size": 16, "channels": 16, "repeats": 3}
    else:
        defaults = {"batch": 64, "size": 32, "channels": 64, "repeats": 7}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batch", "size", "channels", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer")
    if args.channels < 9:
        parser.error("--channels must be at least 9 (ShiftConv(3) needs one channel per offset)")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first call traces and compiles)")
    return args


# --------------------------------------------------------------------------- cost model


def analytic_cost(key, size, channels):
    """Parameters (as keras counts them) and per-image operation counts, from formulas.

    MACs count the multiply-adds of convolutions; batch normalization and ReLU are left out
    (batch normalization folds into the preceding convolution at inference). Adds are the
    additions of AdderConv (one subtraction and one accumulation per kernel element), binary
    ops the XNOR-popcount operations of BinaryConv; the BinaryConv MACs are its one float
    multiply per output by the per-channel scale alpha.
    """
    hw, c, k2 = size * size, channels, 9
    cost = {"params": 0, "macs": 0, "adds": 0, "binary_ops": 0}
    if key in ("conv", "conv_xla"):
        cost.update(params=k2 * c * c + c, macs=hw * k2 * c * c)
    elif key in ("ghost3", "ghost1"):
        k = 3 if key == "ghost3" else 1
        m = math.ceil(c / 2)  # intrinsic channels; ratio 2 -> one ghost per intrinsic channel
        primary, cheap = k * k * c * m, 9 * m
        # two BatchNormalization layers of m channels, 4 weights per channel each
        cost.update(params=primary + cheap + 4 * m + 4 * m, macs=hw * (primary + cheap))
    elif key == "shift":
        cost.update(params=c * c + c, macs=hw * c * c)
    elif key in ("adder", "adder_xla"):
        cost.update(params=k2 * c * c, adds=hw * c * 2 * k2 * c)
    elif key == "binary":
        cost.update(params=k2 * c * c, macs=hw * c, binary_ops=hw * c * k2 * c)
    elif key == "sep":
        cost.update(params=k2 * c + c * c + c, macs=hw * (k2 * c + c * c))
    else:
        raise KeyError(key)
    return cost


def _load_profiler():
    try:
        from tfcompress import profiling
    except ImportError as exc:
        return None, f"tfcompress.profiling not importable ({exc})"
    if not hasattr(profiling, "profile"):
        return None, "tfcompress.profiling has no profile()"
    return profiling.profile, None


_COUNT_ALIASES = {
    "params": ("params", "parameters", "num_params", "total_params"),
    "macs": ("macs", "mults", "multiply_adds", "flops_macs"),
    "adds": ("adds", "additions"),
    "binary_ops": ("binary_ops", "bops", "binary"),
}


def _pick(entry, name):
    for alias in _COUNT_ALIASES[name]:
        if isinstance(entry, dict) and alias in entry and entry[alias] is not None:
            return entry[alias]
    return None


def profiler_cost(profile, model):
    """Totals from `tfcompress.profiling.profile(model)`; raises if it cannot read them."""
    result = profile(model)
    total = None
    if isinstance(result, dict):
        for key in ("total", "totals", "summary"):
            if isinstance(result.get(key), dict):
                total = result[key]
                break
        if total is None and any(_pick(result, n) is not None for n in ("params", "macs")):
            total = result
    if total is None:
        raise ValueError(f"cannot find totals in the profile (keys: {list(result)[:8]})")
    cost = {}
    for name in _COUNT_ALIASES:
        value = _pick(total, name)
        cost[name] = 0 if value is None else int(value)
    return cost


# --------------------------------------------------------------------------- timing


class Case:
    """One layer in a one-layer model, with compiled forward and training-step functions."""

    def __init__(self, key, label, builder, jit, baseline, args, x, target):
        self.key, self.label, self.jit, self.baseline = key, label, jit, baseline
        keras.utils.set_random_seed(args.seed)
        inputs = keras.Input((args.size, args.size, args.channels), name="x")
        layer = builder(args.channels)
        self.model = keras.Model(inputs, layer(inputs), name=key)
        out_shape = tuple(self.model.output.shape[1:])
        if out_shape != (args.size, args.size, args.channels):
            raise AssertionError(f"{label}: output shape {out_shape}, expected the input shape")
        self.optimizer = keras.optimizers.SGD(learning_rate=1e-3)
        self.optimizer.build(self.model.trainable_variables)
        model, optimizer = self.model, self.optimizer
        self.x, self.target = x, target

        @tf.function(jit_compile=jit)
        def forward(x):
            return model(x, training=False)

        @tf.function(jit_compile=jit)
        def train_step(x, target):
            # The input gradient is computed and returned (reduced to a scalar) as for a
            # layer inside a network; otherwise graph pruning would drop that half of the
            # backward pass, since x is a constant.
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_mean(tf.square(model(x, training=True) - target))
            weights = model.trainable_variables
            grad_x, *grads = tape.gradient(loss, [x, *weights])
            optimizer.apply(grads, weights)
            return loss, tf.reduce_sum(grad_x)

        self._fns = {
            "forward": lambda: forward(self.x),
            "train": lambda: train_step(self.x, self.target),
        }
        self.samples = {"forward": [], "train": []}
        self.inner = {}
        self.compile_s = {}

    def warm_up(self, kind, warmup, min_sample_time):
        fn = self._fns[kind]
        start = time.perf_counter()
        _block(fn())
        self.compile_s[kind] = time.perf_counter() - start
        last = None
        for _ in range(warmup):
            start = time.perf_counter()
            _block(fn())
            last = time.perf_counter() - start
        self.inner[kind] = max(1, math.ceil(min_sample_time / max(last, 1e-6)))

    def sample(self, kind):
        fn, inner = self._fns[kind], self.inner[kind]
        start = time.perf_counter()
        for _ in range(inner):
            out = fn()
        _block(out)
        self.samples[kind].append((time.perf_counter() - start) / inner)

    def median(self, kind):
        return statistics.median(self.samples[kind])


def _block(result):
    # On CPU the call already returns computed values; .numpy() makes sure of it.
    return [tensor.numpy() for tensor in tf.nest.flatten(result)]


# --------------------------------------------------------------------------- machine info


def _lscpu_model():
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    fields = {}
    for line in out.splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    model = fields.get("Model name", platform.processor() or "unknown")
    extra = [f"{fields[k]} {k.lower()}" for k in ("CPU(s)",) if k in fields]
    if "Thread(s) per core" in fields:
        extra.append(f"{fields['Thread(s) per core']} thread(s) per core")
    if "Hypervisor vendor" in fields:
        extra.append(f"{fields['Hypervisor vendor']} guest")
    return f"{model} ({', '.join(extra)})" if extra else model


def _loadavg():
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unavailable"


def machine_lines():
    threads = tf.config.threading
    return [
        f"- CPU: {_lscpu_model()}; os.cpu_count() = {os.cpu_count()}",
        (
            f"- TensorFlow {tf.__version__}, Keras {keras.__version__} "
            f"(backend {keras.backend.backend()}), "
            f"NumPy {np.__version__}, Python {platform.python_version()}"
        ),
        (
            f"- TF threads: intra-op {threads.get_intra_op_parallelism_threads() or 'default'}, "
            f"inter-op {threads.get_inter_op_parallelism_threads() or 'default'}; "
            f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset (oneDNN on)')}; "
            f"GPUs visible: {len(tf.config.list_physical_devices('GPU'))}"
        ),
    ]


# --------------------------------------------------------------------------- report


def _fmt_ms(seconds):
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _fmt_ratio(value):
    if value is None:
        return "-"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def _fmt_count(value):
    if not value:
        return "0"
    return f"{value / 1e6:.2f}M" if value >= 1e4 else str(value)


def git_state():
    """The commit the tfcompress package ran at, and whether its files had local changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*argv):
        try:
            return subprocess.run(["git", "-C", root, *argv], capture_output=True, text=True,
                                  check=False, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "(not a git checkout)"
    changed = git("status", "--porcelain", "--", "tfcompress").splitlines()
    return f"at commit {commit}" + (
        f" with uncommitted changes in {len(changed)} file(s) under tfcompress/" if changed else ""
    )


def report_header(started, wall):
    """Command line, date, run time and machine lines that open every RESULTS.md section."""
    command = "PYTHONPATH=. python3 " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + sys.argv[1:])
    return [
        f"Command: `{command}`",
        "",
        f"Date: {started:%Y-%m-%d %H:%M:%S %Z}".rstrip() + f" (run took {wall:.0f} s)",
        "",
        "Machine:",
        "",
        *machine_lines(),
    ]


def build_report(args, cases, costs, cost_source, cost_notes, load_before, load_after, started, wall):
    by_key = {case.key: case for case in cases}
    lines = report_header(started, wall)
    add = lines.append
    add(f"- Load average (1, 5, 15 min) at start: {load_before}; at end: {load_after}")
    add("")
    add(
        f"Shape: ({args.batch}, {args.size}, {args.size}, {args.channels}) -> same; float32; "
        f"{args.repeats} timed samples per layer and pass, after {args.warmup} warm-up call(s) "
        f"(plus the tracing call); a sample repeats a call until it lasts >= "
        f"{args.min_sample_time} s; median reported; layers timed round-robin. Train step = "
        "forward + gradients w.r.t. weights and input + SGD apply, in one tf.function."
        + (" Quick (smoke) mode." if args.quick else "")
    )
    add("")
    add(
        f"Costs per image ({cost_source}): MACs = multiply-adds, Adds = additions (AdderConv), "
        "BinOps = XNOR-popcount operations (BinaryConv). Times are per batch. "
        "Ratios are against Conv2D 3x3 of the same row group: XLA rows against Conv2D under XLA."
    )
    add("")
    add(
        "| Layer | XLA | Params | MACs | Adds | BinOps | MACs vs Conv2D "
        "| Forward ms | Forward vs Conv2D | Train step ms | Train vs Conv2D |"
    )
    add("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_macs = costs["conv"]["macs"]
    for case in cases:
        cost = costs[case.key]
        base = by_key[case.baseline]
        fwd, train = case.median("forward"), case.median("train")
        add(
            f"| {case.label} | {'yes' if case.jit else 'no'} | {cost['params']:,} "
            f"| {_fmt_count(cost['macs'])} | {_fmt_count(cost['adds'])} "
            f"| {_fmt_count(cost['binary_ops'])} | {cost['macs'] / base_macs:.3f} "
            f"| {_fmt_ms(fwd)} | {_fmt_ratio(fwd / base.median('forward'))} "
            f"| {_fmt_ms(train)} | {_fmt_ratio(train / base.median('train'))} |"
        )
    add("")
    add("Timing spread (min / median / max ms over the samples) and first-call (trace + compile) time:")
    add("")
    add("| Layer | XLA | Forward min / med / max | Train min / med / max | First call fwd / train s |")
    add("|---|---|---|---|---|")
    for case in cases:
        spread = {
            kind: " / ".join(
                _fmt_ms(v)
                for v in (min(case.samples[kind]), case.median(kind), max(case.samples[kind]))
            )
            for kind in ("forward", "train")
        }
        add(
            f"| {case.label} | {'yes' if case.jit else 'no'} | {spread['forward']} "
            f"| {spread['train']} | {case.compile_s['forward']:.1f} / {case.compile_s['train']:.1f} |"
        )
    if cost_notes:
        add("")
        lines.extend(cost_notes)
    add("")
    add("Goals (computed from the numbers above):")
    add("")
    ghost_ratio = costs["ghost3"]["macs"] / base_macs
    ghost_ok = abs(ghost_ratio - GHOST_MACS_TARGET) <= GHOST_MACS_TOLERANCE
    add(
        f"- GhostConv(k=3, ratio=2) multiply-adds vs Conv2D: {ghost_ratio:.3f} "
        f"(goal: about half, {GHOST_MACS_TARGET} +- {GHOST_MACS_TOLERANCE}) -> "
        + ("MET" if ghost_ok else "NOT MET")
    )
    ghost1_ratio = costs["ghost1"]["macs"] / base_macs
    add(f"  (GhostConv(k=1, ratio=2), GhostNet's primary 1x1: {ghost1_ratio:.3f} of Conv2D 3x3)")
    pairs = [
        ("adder", "conv", "both without XLA (default)"),
        ("adder_xla", "conv_xla", "both compiled with XLA (jit_compile=True)"),
    ]
    verdicts = []
    for adder_key, conv_key, how in pairs:
        adder, conv = by_key[adder_key], by_key[conv_key]
        ratio = adder.median("train") / conv.median("train")
        fastest = min(adder.samples["train"]) / min(conv.samples["train"])
        ok = ratio <= ADDER_TRAIN_LIMIT
        verdicts.append(ok)
        add(
            f"- AdderConv(3) training step vs Conv2D, {how}: {ratio:.1f}x "
            f"(goal: within {ADDER_TRAIN_LIMIT:g}x) -> " + ("MET" if ok else "NOT MET")
            + f" [ratio of the fastest samples instead of the medians: {fastest:.1f}x]"
        )
    mixed = by_key["adder_xla"].median("train") / by_key["conv"].median("train")
    add(
        f"  (AdderConv(3) under XLA vs Conv2D without XLA: {mixed:.1f}x; "
        "the reference PyTorch AdderNet code is 6-20x slower than conv)"
    )
    if not all(verdicts):
        add(
            "- The AdderConv training-step goal is NOT MET "
            + ("in any configuration measured." if not any(verdicts) else "without XLA.")
        )
    return "\n".join(lines)


def write_section(path, report, begin=BEGIN_MARK, end=END_MARK,
                  title="## Layers (benchmarks/layers.py)"):
    """Replaces the text between `begin` and `end` in `path`, or appends a titled section."""
    section = f"{begin}\n{report}\n{end}\n"
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        if text and not text.endswith("\n"):
            text += "\n"
        text += ("\n" if text else "") + title + "\n\n" + section
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# --------------------------------------------------------------------------- main


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = datetime.datetime.now().astimezone()
    load_before = _loadavg()
    t0 = time.perf_counter()

    rng = np.random.default_rng(args.seed)
    shape = (args.batch, args.size, args.size, args.channels)
    x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    target = tf.constant(rng.standard_normal(shape, dtype=np.float32))

    cases = [Case(*variant, args=args, x=x, target=target) for variant in VARIANTS]

    profile, why_not = _load_profiler()
    costs, cost_notes, profiler_failed = {}, [], False
    cost_source = "from the formulas in benchmarks/layers.py (analytic_cost)"
    if profile is not None:
        cost_source = "from tfcompress.profiling.profile"
    for case in cases:
        formula = analytic_cost(case.key, args.size, args.channels)
        keras_params = case.model.count_params()
        if keras_params != formula["params"]:
            cost_notes.append(
                f"- Note: {case.label}: keras counts {keras_params:,} parameters, "
                f"the formula {formula['params']:,}."
            )
        if profile is None:
            costs[case.key] = formula
            continue
        try:
            measured = profiler_cost(profile, case.model)
        except Exception as exc:  # noqa: BLE001 -- the profiler is new: fall back rather than lose the run
            cost_source = "from the formulas in benchmarks/layers.py (the profiler failed on a layer)"
            cost_notes.append(f"- Note: profile() failed on {case.label}: {type(exc).__name__}: {exc}")
            profiler_failed = True
            costs[case.key] = formula
            continue
        costs[case.key] = measured
        diffs = [n for n in formula if measured[n] != formula[n]]
        if diffs:
            cost_notes.append(
                f"- Note: {case.label}: profiler and formulas differ on "
                + ", ".join(f"{n} ({measured[n]:,} vs {formula[n]:,})" for n in diffs)
            )
    if profile is None:
        cost_notes.append(f"- Costs from formulas because {why_not}.")
    elif not profiler_failed and not any("differ" in note for note in cost_notes):
        cost_notes.append(
            "- The profiler's params, MACs, adds and binary ops agree with the formulas in "
            "analytic_cost for every row."
        )
    if profiler_failed:  # one source for every row
        costs = {case.key: analytic_cost(case.key, args.size, args.channels) for case in cases}

    for kind in ("forward", "train"):
        for case in cases:
            print(f"[warm-up] {case.key} {kind}", file=sys.stderr, flush=True)
            case.warm_up(kind, args.warmup, args.min_sample_time)
    for r in range(args.repeats):
        print(f"[repeat {r + 1}/{args.repeats}]", file=sys.stderr, flush=True)
        for kind in ("forward", "train"):
            for case in cases:
                case.sample(kind)

    report = build_report(
        args, cases, costs, cost_source, cost_notes, load_before, _loadavg(), started,
        time.perf_counter() - t0,
    )
    print(report)
    if args.output:
        write_section(args.output, report)
        print(f"[wrote section into {args.output}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
