"""The per-weight encoding plan: the smallest container encoding of one array.

NumPy only. `plan_weight` sizes every encoding that applies to an array
("zeros", "raw", "codebook", "sparse", "sparse+codebook") and keeps the smallest,
with its metadata, its payload functions and the statistics of the report;
`default_index_bits` is the paper's choice of sparse index bits.
"""

import dataclasses

import numpy as np

from tfcompress.coding.bits import bit_view, check_numeric, le_bytes, nonzero_mask
from tfcompress.coding.codebook import MAX_CODEBOOK_SIZE, quantize_to_codebook
from tfcompress.coding.sparse import encode_sparse
from tfcompress.coding.streams import plan_stream

__all__ = ["default_index_bits", "plan_weight"]


def default_index_bits(shape):
    """Bits per sparse index difference by default: 8 for conv kernels, 5 otherwise.

    The paper's choice (Deep Compression, sec. 2): 8 bits for conv layers and 5
    bits for fc layers. Kernels of rank >= 3 (Conv1D/2D/3D, depthwise) count as
    conv, anything else (Dense kernels, biases, ...) as fc.

    Args:
        shape: the array's shape.

    Returns:
        8 or 5.
    """
    return 8 if len(shape) >= 3 else 5


def _section_overhead(name):
    """Bytes that frame one container section: name length, name, payload length, CRC32."""
    return 2 + len(name.encode("utf-8")) + 8 + 4


@dataclasses.dataclass
class _Candidate:
    encoding: str
    parts: dict  # part -> (nbytes, payload function)
    meta: dict
    stats: dict

    def cost(self, names):
        return sum(n + _section_overhead(names[p]) for p, (n, _) in self.parts.items())


def plan_weight(array, path, names_for, index_bits, huffman):
    """Chooses and describes the smallest encoding of one variable."""
    array = np.ascontiguousarray(np.asarray(array))
    check_numeric(array, f"weight {path}")
    dtype = array.dtype
    itemsize = dtype.itemsize
    size = int(array.size)
    flat = array.reshape(-1)
    nonzero = int(np.count_nonzero(nonzero_mask(flat)))
    bits = index_bits if index_bits is not None else default_index_bits(array.shape)
    base = {"path": path, "shape": list(array.shape), "dtype": dtype.name}
    stats = {"path": path, "shape": tuple(array.shape), "dtype": dtype.name, "size": size,
             "nonzero": nonzero, "entries": 0, "fillers": 0, "codebook_size": None,
             "index_bits": None, "value_bits": 0, "value_coding": None, "value_stream_bits": 0,
             "offset_coding": None, "offset_stream_bits": 0, "codebook_bits": 0,
             "table_bits": 0}
    if nonzero == 0:
        return _Candidate("zeros", {}, {**base, "encoding": "zeros"}, dict(stats, encoding="zeros"))

    candidates = []
    raw_bytes = size * itemsize
    candidates.append(_Candidate(
        "raw", {"raw": (raw_bytes, lambda: le_bytes(flat))}, dict(base),
        dict(stats, encoding="raw", entries=size, value_bits=8 * itemsize,
             value_coding="raw", value_stream_bits=8 * raw_bytes),
    ))

    bit_exact = itemsize in (1, 2, 4, 8)
    if bit_exact:
        sparse = encode_sparse(array, index_bits=bits, order="C")
        entries = sparse.num_entries
        offsets = plan_stream(sparse.diffs, bits, huffman)
        sparse_meta = dict(base, index_bits=bits, order="C", entries=entries)
        sparse_stats = dict(stats, entries=entries, fillers=entries - nonzero, index_bits=bits,
                            offset_coding=offsets.coding, offset_stream_bits=offsets.bits,
                            table_bits=8 * len(offsets.table))
        values = sparse.values
        candidates.append(_Candidate(
            "sparse",
            {"values": (entries * itemsize, lambda: le_bytes(values)),
             "offsets": (offsets.nbytes, offsets.payload)},
            dict(sparse_meta, streams={"offsets": offsets.meta()}),
            dict(sparse_stats, encoding="sparse", value_bits=8 * itemsize, value_coding="raw",
                 value_stream_bits=8 * entries * itemsize),
        ))

        best = min(c.cost(names_for(c)) for c in candidates)
        distinct = np.unique(bit_view(flat)).size - (1 if nonzero < size else 0)
        codebook_size = distinct + 1
        if codebook_size <= MAX_CODEBOOK_SIZE and distinct * itemsize < best:
            codebook, indices = quantize_to_codebook(array)
            codebook_payload = codebook[1:]
            width = (codebook_size - 1).bit_length()
            cb_part = ((codebook_size - 1) * itemsize, lambda: le_bytes(codebook_payload))
            cb_stats = {"codebook_size": codebook_size,
                        "codebook_bits": 8 * (codebook_size - 1) * itemsize, "value_bits": width}
            dense_indices = plan_stream(indices.reshape(-1), width, huffman)
            candidates.append(_Candidate(
                "codebook",
                {"codebook": cb_part, "indices": (dense_indices.nbytes, dense_indices.payload)},
                dict(base, codebook_size=codebook_size,
                     streams={"indices": dense_indices.meta()}),
                dict(stats, encoding="codebook", entries=size, value_coding=dense_indices.coding,
                     value_stream_bits=dense_indices.bits,
                     table_bits=8 * len(dense_indices.table), **cb_stats),
            ))
            sparse_indices = encode_sparse(indices, index_bits=bits, order="C").values
            sparse_stream = plan_stream(sparse_indices, width, huffman)
            candidates.append(_Candidate(
                "sparse+codebook",
                {"codebook": cb_part,
                 "indices": (sparse_stream.nbytes, sparse_stream.payload),
                 "offsets": (offsets.nbytes, offsets.payload)},
                dict(sparse_meta, codebook_size=codebook_size,
                     streams={"indices": sparse_stream.meta(), "offsets": offsets.meta()}),
                dict(sparse_stats, encoding="sparse+codebook", value_coding=sparse_stream.coding,
                     value_stream_bits=sparse_stream.bits,
                     table_bits=8 * (len(offsets.table) + len(sparse_stream.table)), **cb_stats),
            ))
    chosen = min(candidates, key=lambda c: c.cost(names_for(c)))  # first of equals
    chosen.meta = {**base, "encoding": chosen.encoding, **chosen.meta}
    return chosen
