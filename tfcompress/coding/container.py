"""The `.tfcz` container: a whole Keras model, its weights in their smallest encoding.

The Keras part of `tfcompress.coding` (layout: the package docstring).
`save_compressed` plans every variable of a model (`tfcompress.coding.plan`) and
writes the container; `load_compressed` reads it back, bit for bit;
`container_info` lists what a container holds; `compression_report` gives the
report of what `save_compressed` writes. The errors of reading are
`ContainerError` and its subclasses.
"""

import dataclasses
import json
import os
import struct
import zlib

import keras
import numpy as np

from tfcompress.coding.bits import check_index_bits, from_le_bytes
from tfcompress.coding.plan import plan_weight
from tfcompress.coding.report import build_report
from tfcompress.coding.sparse import SparseArray, decode_sparse
from tfcompress.coding.streams import decode_stream
from tfcompress.core.wrapper import KernelWrapper, strip_wrappers, wrappers_in
from tfcompress.fileio import write_atomic

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "SUPPORTED_VERSIONS",
    "ChecksumError",
    "ContainerError",
    "TruncatedContainerError",
    "UnsupportedVersionError",
    "compression_report",
    "container_info",
    "load_compressed",
    "save_compressed",
]

MAGIC = b"TFCZ"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)


# --------------------------------------------------------------------------- errors


class ContainerError(ValueError):
    """A file that is not a valid tfcompress container (bad magic, bad structure)."""


class UnsupportedVersionError(ContainerError):
    """A container written in a format version this tfcompress cannot read."""


class TruncatedContainerError(ContainerError):
    """A container that ends before a section it declares is complete."""


class ChecksumError(ContainerError):
    """A section whose CRC32 does not match its bytes (the file is corrupt)."""


# --------------------------------------------------------------------------- helpers


def _check_huffman(huffman):
    if not isinstance(huffman, (bool, np.bool_)):
        raise ValueError(  # noqa: TRY004 - the library raises ValueError for bad arguments
            f"`huffman` must be True or False. Received: huffman={huffman!r}"
        )
    return bool(huffman)


def _resolve_dtype(name):
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        if hasattr(ml_dtypes, name):
            return np.dtype(getattr(ml_dtypes, name))
        raise ValueError(f"Unknown dtype {name!r} in the container.") from None


# --------------------------------------------------------------------------- models


def _layer_name(path, model_name):
    """The layer part of a variable path, without the model's own name in front."""
    if path.startswith(model_name + "/") and path.count("/") >= 2:
        path = path[len(model_name) + 1:]
    return path.rsplit("/", 1)[0] if "/" in path else path


def _section_names(paths):
    """The section-name stem of each variable path, unique even for repeated paths."""
    seen = {}
    for path in paths:
        seen[path] = seen.get(path, 0) + 1
    result = []
    for i, path in enumerate(paths):
        stem = f"weights/{path}" if seen[path] == 1 else f"weights/{path}#{i}"
        result.append(stem)
    return result


def _check_model(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(  # noqa: TRY004
            f"{what} needs a keras.Model (functional or Sequential). "
            f"Received: {type(model).__name__}"
        )


@dataclasses.dataclass
class _Plan:
    model: keras.Model
    weights: list  # of plan_weight results
    stems: list
    index_bits: object
    huffman: bool


def _plan_model(model, index_bits, huffman):
    _check_model(model, "Compression")
    if index_bits is not None:
        index_bits = check_index_bits(index_bits)
    huffman = _check_huffman(huffman)
    if wrappers_in(model, KernelWrapper):  # pruning / clustering wrappers
        model = strip_wrappers(model, KernelWrapper)
    variables = list(model.weights)
    arrays = model.get_weights()
    paths = [getattr(v, "path", None) or v.name for v in variables]
    stems = _section_names(paths)
    plans = []
    for array, path, stem in zip(arrays, paths, stems):
        def names_for(candidate, stem=stem):
            return {part: f"{stem}:{part}" for part in candidate.parts}

        plan = plan_weight(array, path, names_for, index_bits, huffman)
        plan.meta["sections"] = names_for(plan)
        plan.stats["layer"] = _layer_name(path, model.name)
        plan.stats["payload_bytes"] = sum(n for n, _ in plan.parts.values())
        plan.stats["section_bytes"] = plan.cost(names_for(plan))
        plans.append(plan)
    return _Plan(model=model, weights=plans, stems=stems, index_bits=index_bits, huffman=huffman)


# --------------------------------------------------------------------------- writing


def _section(name, payload):
    name_bytes = name.encode("utf-8")
    head = struct.pack("<H", len(name_bytes)) + name_bytes + struct.pack("<Q", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + payload + struct.pack("<I", crc)


def _model_config(model):
    try:
        return model.to_json()
    except (TypeError, ValueError, NotImplementedError, AttributeError) as error:
        raise ValueError(
            f"Model {model.name!r} cannot be serialized with model.to_json(), so it cannot be "
            f"stored in a container (use a functional or Sequential model of serializable "
            f"layers): {error}"
        ) from error


def _assemble(plan):
    """The bytes of the container for a planned model."""
    import tfcompress

    model = plan.model
    header = {
        "format": "tfcompress-container",
        "version": FORMAT_VERSION,
        "tfcompress_version": getattr(tfcompress, "__version__", "unknown"),
        "keras_version": keras.__version__,
        "model_name": model.name,
        "model_class": type(model).__name__,
        "huffman": plan.huffman,
        "index_bits": plan.index_bits,
        "weights": [w.meta for w in plan.weights],
    }
    config = _model_config(model)
    out = [MAGIC, struct.pack("<H", FORMAT_VERSION),
           _section("header", zlib.compress(
               json.dumps(header, separators=(",", ":")).encode("utf-8"), 9)),
           _section("model_config", zlib.compress(config.encode("utf-8"), 9))]
    for weight in plan.weights:
        for part, (nbytes, make) in weight.parts.items():
            payload = make()
            if len(payload) != nbytes:  # the size estimate is the size written
                raise AssertionError(
                    f"{weight.meta['sections'][part]}: planned {nbytes} bytes, "
                    f"encoded {len(payload)}"
                )
            out.append(_section(weight.meta["sections"][part], payload))
    out.append(_section("end", b""))
    return b"".join(out)


def save_compressed(model, path, index_bits=None, huffman=True):
    """Writes a Keras model to a Deep Compression container (layout: module docstring).

    Pruning and clustering wrappers are stripped first. Every variable of
    `model.weights` is stored in the smallest of the encodings "zeros", "raw",
    "codebook" (weight sharing, sec. 3), "sparse" (sec. 2) and
    "sparse+codebook" (sec. 2-3), with the codebook indices and the sparse index
    differences Huffman coded (sec. 4) where that is smaller. The model
    architecture is `model.to_json()`. Nothing is written unless the whole file
    can be: it is written to a temporary file renamed into place, so a failure
    leaves no file (or the previous file) behind. Optimizer state and compile
    settings are not stored.

    Args:
        model: a functional or Sequential `keras.Model` (tfcompress layers
            included), possibly with `PruneLowMagnitude` / `ClusterWeights`
            wrappers.
        path: destination file (conventionally `.tfcz`).
        index_bits: bits per sparse index difference, 1..16; None: 8 for conv
            kernels and 5 for everything else, as in the paper.
        huffman: Huffman-code the index and offset streams (where smaller).

    Returns:
        The `CompressionReport` of what was written (its `total["container_bytes"]`
        is the file size).

    Raises:
        ValueError: for invalid arguments or a model that cannot be serialized.
        OSError: if the file cannot be written (e.g. a missing directory).

    Example:
        >>> report = save_compressed(model, "lenet.tfcz")
        >>> restored = load_compressed("lenet.tfcz")
    """
    plan = _plan_model(model, index_bits, huffman)
    data = _assemble(plan)
    write_atomic(os.fspath(path), data)
    return build_report(plan, container_bytes=len(data))


# --------------------------------------------------------------------------- reading


def _parse(data, source):
    """(version, [(name, payload, offset)]) of a container, every CRC32 checked."""
    if len(data) < 6 or data[:4] != MAGIC:
        raise ContainerError(
            f"{source} is not a tfcompress container: it starts with {bytes(data[:4])!r}, "
            f"expected the magic {MAGIC!r}."
        )
    (version,) = struct.unpack_from("<H", data, 4)
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersionError(
            f"{source} is a tfcompress container of format version {version}; this "
            f"tfcompress reads versions {', '.join(map(str, SUPPORTED_VERSIONS))}."
        )
    offset, sections, total = 6, [], len(data)

    def need(n, what, name=None):
        available = total - offset
        if n > available:
            where = f"section {name!r}" if name is not None else f"section #{len(sections)}"
            raise TruncatedContainerError(
                f"{source} is truncated (or corrupt): reading the {what} of {where} at byte "
                f"{offset} needs {n} bytes, only {available} are available."
            )

    while True:
        if offset == total:
            last = sections[-1][0] if sections else "none"
            raise TruncatedContainerError(
                f"{source} is truncated: it ends after {len(sections)} sections (the last "
                f"is {last!r}) without the 'end' section."
            )
        start = offset
        need(2, "name length")
        (name_length,) = struct.unpack_from("<H", data, offset)
        offset += 2
        need(name_length, "name")
        name = bytes(data[offset:offset + name_length]).decode("utf-8", errors="replace")
        offset += name_length
        need(8, "payload length", name)
        (length,) = struct.unpack_from("<Q", data, offset)
        offset += 8
        need(length, "payload", name)
        payload = bytes(data[offset:offset + length])
        offset += length
        need(4, "CRC32", name)
        (stored,) = struct.unpack_from("<I", data, offset)
        computed = zlib.crc32(bytes(data[start:offset]))
        if stored != computed:
            raise ChecksumError(
                f"{source}: checksum mismatch in section {name!r} (#{len(sections)}, at byte "
                f"{start}): stored CRC32 {stored:#010x}, computed {computed:#010x}; the file "
                "is corrupt."
            )
        offset += 4
        sections.append((name, payload, start))
        if name == "end":
            if length:
                raise ContainerError(f"{source}: the 'end' section must be empty.")
            if offset != total:
                raise ContainerError(
                    f"{source}: {total - offset} unexpected bytes after the 'end' section."
                )
            return version, sections


def _read_container(path):
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    version, sections = _parse(data, path)
    by_name = {}
    for name, payload, _ in sections:
        if name in by_name:
            raise ContainerError(f"{path}: section {name!r} appears twice.")
        by_name[name] = payload
    for required in ("header", "model_config"):
        if required not in by_name:
            raise ContainerError(f"{path}: the {required!r} section is missing.")
    try:
        header = json.loads(zlib.decompress(by_name["header"]).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ContainerError(
            f"{path}: the header is not zlib-compressed JSON: {error}"
        ) from error
    if not isinstance(header, dict) or not isinstance(header.get("weights"), list):
        raise ContainerError(f"{path}: the header has no list of weights.")
    return data, version, sections, by_name, header


def container_info(path):
    """What a container holds, with every section's CRC32 checked.

    Args:
        path: a file written by `save_compressed`.

    Returns:
        A dict: "path", "bytes" (file size), "version", "header" (the parsed
        JSON header), "sections" (a list of {"name", "bytes" (payload size),
        "offset" (of the section record)}) and "payload_bytes" (sum of the
        weight sections' payloads).

    Raises:
        ContainerError (a ValueError): not a container, an unsupported version
            (`UnsupportedVersionError`), a truncated file
            (`TruncatedContainerError`), a checksum mismatch (`ChecksumError`).
        OSError: if the file cannot be read.

    Example:
        >>> info = container_info("lenet.tfcz")
        >>> [s["name"] for s in info["sections"]][:2]
        ['header', 'model_config']
    """
    data, version, sections, _, header = _read_container(path)
    listed = [{"name": name, "bytes": len(payload), "offset": start}
              for name, payload, start in sections]
    return {
        "path": os.fspath(path),
        "bytes": len(data),
        "version": version,
        "header": header,
        "sections": listed,
        "payload_bytes": sum(s["bytes"] for s in listed if s["name"].startswith("weights/")),
    }


def _decode_weight(meta, by_name):
    encoding = meta["encoding"]
    shape = tuple(int(d) for d in meta["shape"])
    dtype = _resolve_dtype(meta["dtype"])
    size = int(np.prod(shape, dtype=np.int64))
    names = meta.get("sections", {})

    def payload(part):
        name = names.get(part)
        if name not in by_name:
            raise ValueError(f"its section {name or part!r} is missing")
        return by_name[name]

    def raw(part, count):
        data = payload(part)
        if len(data) != count * dtype.itemsize:
            raise ValueError(
                f"section {names[part]!r} holds {len(data)} bytes, expected "
                f"{count} x {dtype.itemsize}"
            )
        return from_le_bytes(data, dtype, count)

    if encoding == "zeros":
        return np.zeros(shape, dtype=dtype)
    if encoding == "raw":
        return raw("raw", size).reshape(shape)
    if encoding not in ("codebook", "sparse", "sparse+codebook"):
        raise ValueError(f"unknown encoding {encoding!r}")
    if "codebook" in encoding:
        codebook_size = int(meta["codebook_size"])
        codebook = np.concatenate([np.zeros(1, dtype), raw("codebook", codebook_size - 1)])
        indices = decode_stream(meta["streams"]["indices"], payload("indices"))
        if indices.size and (indices.min() < 0 or indices.max() >= codebook_size):
            raise ValueError(f"an index is outside the codebook of {codebook_size} entries")
    if encoding == "codebook":
        if indices.size != size:
            raise ValueError(f"{indices.size} indices for {size} elements")
        return codebook[indices].reshape(shape)
    entries = int(meta["entries"])
    values = codebook[indices] if encoding == "sparse+codebook" else raw("values", entries)
    diffs = decode_stream(meta["streams"]["offsets"], payload("offsets"))
    if values.size != entries or diffs.size != entries:
        raise ValueError(f"{values.size} values and {diffs.size} offsets for {entries} entries")
    sparse = SparseArray(values=values, diffs=diffs, shape=shape, order=meta["order"],
                         index_bits=int(meta["index_bits"]))
    return decode_sparse(sparse)


def load_compressed(path):
    """Reads a model written by `save_compressed`, weights bit-identical.

    Checks the magic, the format version and the CRC32 of every section, then
    rebuilds the architecture with `keras.models.model_from_json` (tfcompress
    layers are registered serializable) and sets every weight.

    Args:
        path: a container file.

    Returns:
        A `keras.Model` (not compiled).

    Raises:
        ContainerError (a ValueError): the file is not a container, has an
            unsupported version (`UnsupportedVersionError`), is truncated
            (`TruncatedContainerError`), has a section whose CRC32 does not
            match (`ChecksumError`), or does not fit the model it describes.
        OSError: if the file cannot be read.

    Example:
        >>> model = load_compressed("lenet.tfcz")
    """
    path = os.fspath(path)
    _, _, _, by_name, header = _read_container(path)
    import tfcompress.layers  # noqa: F401  (registers the tfcompress layers)

    try:
        config = zlib.decompress(by_name["model_config"]).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as error:
        raise ContainerError(f"{path}: the model config cannot be decompressed: {error}") from error
    model = keras.models.model_from_json(config)
    metas = header["weights"]
    variables = list(model.weights)
    if len(variables) != len(metas):
        raise ContainerError(
            f"{path}: the container holds {len(metas)} weights but the model it describes "
            f"has {len(variables)}."
        )
    arrays = []
    for i, (meta, variable) in enumerate(zip(metas, variables)):
        label = meta.get("path", f"#{i}") if isinstance(meta, dict) else f"#{i}"
        try:
            array = _decode_weight(meta, by_name)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise ContainerError(f"{path}: weight {label!r}: {error}") from error
        if tuple(array.shape) != tuple(variable.shape):
            raise ContainerError(
                f"{path}: weight {label!r} has shape {tuple(array.shape)} but the model's "
                f"variable {variable.path!r} has shape {tuple(variable.shape)}."
            )
        arrays.append(array)
    model.set_weights(arrays)
    return model


# --------------------------------------------------------------------------- report


def compression_report(model, index_bits=None, huffman=True):
    """The per-layer compression table of Deep Compression (Tables 2-3) for a model.

    Plans exactly what `save_compressed(model, path, index_bits, huffman)`
    writes (the same encodings and Huffman codes) and sums it per layer: the
    non-zero fraction, bits per weight index and per sparse offset before and
    after Huffman coding, codebook bits, total bits and the compression ratio
    against 32-bit dense storage. The container size is included when the
    model can be serialized.

    Args:
        model: a functional or Sequential `keras.Model` (wrappers are stripped).
        index_bits: as for `save_compressed`.
        huffman: as for `save_compressed`.

    Returns:
        A `CompressionReport`.

    Raises:
        ValueError: for invalid arguments.

    Example:
        >>> print(compression_report(model))
    """
    plan = _plan_model(model, index_bits, huffman)
    try:
        container_bytes = len(_assemble(plan))
    except ValueError:  # not serializable: the payload numbers still hold
        container_bytes = None
    return build_report(plan, container_bytes=container_bytes)
