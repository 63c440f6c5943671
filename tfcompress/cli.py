"""The command-line harness every tool shares, and the `tfcompress` console script.

Every tool in `tools/` (`compress`, `evaluate`, `benchmark`, `inspect`,
`sensitivity`, `deploy`) defines its absl flags and a `main(argv)`, and hands both to
`run(main, check=...)`, which gives all of them the same behaviour:

- `--help` (or `-h`) prints the tool's usage and its own flags and exits 0;
- flags are parsed and `check()` validates them before any work; a bad value is
  one line on stderr, `<tool>: error: --flag=value: what is allowed`, exit 2;
- a failure during the work is one line, `<tool>: error: ...`, exit 1; the
  traceback only with `--verbose`;
- TensorFlow's, CUDA's, oneDNN's, absl's and the TFLite converter's log lines
  (written by native code straight to the process's stderr) are dropped unless
  `--verbose`; Python's own `sys.stderr` keeps working;
- outputs go to a staging folder inside the output folder and are moved into
  place only when the tool succeeds (`Outputs`): a failed run leaves nothing.

`tfcompress <command> [flags]` (console script, `tools/__main__.py`) runs
`tools/<command>.py`; the tools ship as the package `tfcompress_tools`, and
`python tools/x.py` keeps working.
"""

import contextlib
import os
import shutil
import sys
import traceback

__all__ = [
    "Outputs",
    "UsageError",
    "check_dataset",
    "check_flags_apply",
    "check_json_path",
    "print_rows",
    "run",
]



try:  # the same class as absl's, so `raise app.UsageError(...)` in a tool is one too
    from absl.app import UsageError
except ImportError:  # pragma: no cover - absl is a dependency
    class UsageError(Exception):
        """A bad flag or argument: exit code 2."""


def _wants(argv, *names):
    return any(a == n or a.startswith(n + "=") and a.split("=", 1)[1].lower() in (
        "1", "true", "yes") for a in argv[1:] for n in names)


def _fd2_is_devnull():
    try:
        fd2, null = os.fstat(2), os.stat(os.devnull)
    except OSError:
        return True
    return (fd2.st_dev, fd2.st_ino) == (null.st_dev, null.st_ino)


def _silence_native_stderr():
    """Sends file descriptor 2 (native code's stderr) to /dev/null; keeps Python's.

    `tools/_quiet.py` does the same before TensorFlow is first imported, with its own
    copy of these lines: any `tfcompress.*` import runs `tfcompress/__init__.py`, which
    imports TensorFlow, whose import already logs. This is a no-op when it already did."""
    if _fd2_is_devnull():
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        return
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace")


def _quiet(verbose):
    """Silences TensorFlow and absl unless `verbose`; imports TensorFlow once, quietly."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _silence_native_stderr()
    import warnings

    warnings.filterwarnings("ignore")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    tf.config.list_physical_devices()  # CUDA's probe logs here, not in the middle of work
    from absl import logging

    logging.set_verbosity(logging.ERROR)


def print_rows(rows):
    """Prints (key, value) pairs as an aligned two-column summary after a blank line."""
    width = max(len(key) for key, _ in rows)
    print()
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def check_flags_apply(flag_values, allowed, context):
    """Raises UsageError for a flag given on the command line that does not apply.

    Args:
        flag_values: absl's FLAGS.
        allowed: {flag name: collection of contexts it applies to}; flags not in
            it apply everywhere.
        context: the current context (e.g. the chosen recipe, "--recipe=default").
    """
    for name, where in allowed.items():
        if flag_values[name].present and context not in where:
            value = flag_values[name].value
            raise UsageError(
                f"--{name}={value} does not apply with {context}; it applies with "
                + " or ".join(sorted(where)) + "."
            )


def check_dataset(name, data_dir, flag="dataset"):
    """Raises UsageError for an unknown dataset name or a data folder without its file."""
    from tfcompress import datasets

    if name not in datasets.available():
        raise UsageError(f"--{flag}={name}: unknown dataset; allowed: "
                         + ", ".join(datasets.available()) + ".")
    if data_dir is not None and not os.path.isdir(data_dir):
        raise UsageError(f"--data_dir={data_dir}: no such folder.")
    if name == "digits":
        return
    folder = data_dir or os.environ.get(datasets.ENV_VAR)
    if folder and not os.path.isfile(os.path.join(folder, f"{name}.npz")):
        where = f"--data_dir={data_dir}" if data_dir else f"${datasets.ENV_VAR}={folder}"
        raise UsageError(f"--{flag}={name}: {where} holds no {name}.npz.")


def check_json_path(path, flag="json"):
    """Raises UsageError when the folder a JSON report should go to does not exist."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--{flag}={path}: the folder {folder} does not exist.")
    if os.path.isdir(path):
        raise UsageError(f"--{flag}={path}: is a folder; give a file name.")


def _usage(module_doc, flag_values, module_name):
    text = (module_doc or "").strip()
    flag_help = flag_values.module_help(module_name) if module_name else ""
    return text + ("\n\nFlags:\n" + flag_help if flag_help else "") + (
        "\n  --verbose: show TensorFlow's log lines and full tracebacks")


def _error(prog, message):
    print(f"{prog}: error: {message}", file=sys.stderr)


def run(main, *, check=None, argv=None):
    """Parses flags, validates them, runs `main(argv)` with the harness's behaviour.

    Args:
        main: `main(argv) -> int or None`, the tool's work (argv: positional args).
        check: None, or `check(argv)` raising `UsageError` for bad flags or
            arguments; runs after parsing and before `main`.
        argv: the command line (default `sys.argv`).

    Raises:
        SystemExit: always, with 0 on success, 2 for usage errors, 1 for failures
        (and main's own non-zero return value).
    """
    from absl import flags

    argv = list(sys.argv if argv is None else argv)
    prog = os.path.splitext(os.path.basename(argv[0]))[0]
    module = sys.modules.get(main.__module__)
    flag_values = flags.FLAGS
    if not any(name == "verbose" for name in flag_values):
        flags.DEFINE_bool("verbose", False, "Show TensorFlow's log lines and full tracebacks.")
    if any(a in ("-h", "--help", "--helpshort", "--helpfull", "-help") for a in argv[1:]):
        print(_usage(getattr(module, "__doc__", ""), flag_values,
                     getattr(module, "__name__", None) if module else None))
        raise SystemExit(0)
    verbose = _wants(argv, "--verbose")
    try:
        rest = flag_values(argv)
    except flags.Error as error:
        _error(prog, f"{error} (see --help)")
        raise SystemExit(2) from None
    _quiet(verbose)
    try:
        if check is not None:
            check(rest)
        status = main(rest)
    except UsageError as error:
        _error(prog, error)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        _error(prog, "interrupted")
        raise SystemExit(130) from None
    except SystemExit as error:
        if isinstance(error.code, str):
            _error(prog, error.code)
            raise SystemExit(1) from None
        raise
    except Exception as error:  # noqa: BLE001 - one line for the user, traceback on demand
        if verbose:
            traceback.print_exc()
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _error(prog, f"{type(error).__name__}: {message}" if message else type(error).__name__)
        if not verbose:
            print(f"{prog}: run again with --verbose for the traceback", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(int(status or 0))


class Outputs:
    """The files a tool writes: staged, described, moved into place on success.

    Example:
        >>> with Outputs("compress_out") as out:
        ...     model.save(out.path("small_cnn.keras", "the trained float model"))
        >>> out.listing()   # every file and what it is for
    """

    def __init__(self, folder):
        self.folder = folder
        self.files = {}  # name -> what it is for
        self._created = False
        self._staging = None

    def __enter__(self):
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise UsageError(f"--output_dir={self.folder}: exists and is not a folder.")
        if not os.path.isdir(self.folder):
            os.makedirs(self.folder)
            self._created = True
        self._staging = os.path.join(self.folder, f".partial-{os.getpid()}")
        shutil.rmtree(self._staging, ignore_errors=True)
        os.makedirs(self._staging)
        return self

    def path(self, name, purpose):
        """Where to write `name` now (in the staging folder); records its purpose."""
        self.files[name] = purpose
        return os.path.join(self._staging, name)

    def discard(self, name):
        """Forgets `name` (a file that was not written after all, e.g. an empty plot)."""
        self.files.pop(name, None)
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self._staging, name))

    def final(self, name):
        """Where `name` will be once the tool succeeds."""
        return os.path.join(self.folder, name)

    def __exit__(self, kind, value, tb):
        if kind is None:
            for name in self.files:
                staged = os.path.join(self._staging, name)
                if os.path.exists(staged):
                    os.replace(staged, os.path.join(self.folder, name))
            self.files = {n: p for n, p in self.files.items()
                          if os.path.exists(os.path.join(self.folder, n))}
        shutil.rmtree(self._staging, ignore_errors=True)
        if kind is not None and self._created:
            with contextlib.suppress(OSError):
                os.rmdir(self.folder)  # only if empty
        return False

    def listing(self):
        """`wrote <folder>/:` and one line per file with what it is for."""
        width = max((len(n) for n in self.files), default=0)
        lines = [f"wrote {self.folder}/:"]
        lines += [f"  {name:<{width}}  {purpose}" for name, purpose in self.files.items()]
        return "\n".join(lines)
