"""Imported first by every tool: drops native log lines unless --verbose.

TensorFlow's C++ code (oneDNN, CUDA probing, the TFLite converter, LiteRT) writes
straight to file descriptor 2, some of it while `import tensorflow` runs, so this
must happen before anything imports TensorFlow (importing `tfcompress` does).
Python's `sys.stderr` is moved to a copy of the real stderr and keeps working.
`tfcompress.cli.run` finishes the job (Python warnings, TF's and absl's loggers).
"""

import os
import sys

__all__ = ["silence"]


def _verbose(argv):
    return any(a == "--verbose" or a.lower() in ("--verbose=true", "--verbose=1")
               for a in argv[1:])


def silence(argv=None):
    """Unless `--verbose` is on the command line: TF_CPP_MIN_LOG_LEVEL=3 and fd 2 to
    /dev/null, with `sys.stderr` on a duplicate of the original fd 2."""
    argv = sys.argv if argv is None else argv
    if _verbose(argv):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        fd2, null = os.fstat(2), os.stat(os.devnull)
        if (fd2.st_dev, fd2.st_ino) == (null.st_dev, null.st_ino):
            return  # already done (the console script, then the tool)
        saved = os.dup(2)
    except OSError:
        return
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace")
