"""File writing that never leaves a partial file behind."""

import os

__all__ = ["write_atomic"]


def write_atomic(path, data):
    """Writes bytes or text to `path` through a temporary file renamed into place.

    If writing fails, the temporary file is removed and `path` is untouched (an
    earlier version, if any, stays whole).

    Args:
        path: destination file.
        data: `bytes` (written in binary mode) or `str`.

    Example:
        >>> write_atomic("model.tflite", tflite_bytes)
    """
    mode = "wb" if isinstance(data, bytes) else "w"
    tmp = f"{path}.tmp"
    try:
        with open(tmp, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
