"""Huffman coding, the sparse index format and the compressed-model container.

The third stage of Deep Compression: Han, Mao, Dally. "Deep Compression:
Compressing Deep Neural Networks with Pruning, Trained Quantization and Huffman
Coding", ICLR 2016, arXiv:1510.00149.

- Sparse storage (sec. 2, Figure 2): the non-zero entries of a weight array are
  stored in order (row-major "C" order is CSR-like, column-major "F" order is
  CSC-like) together with the relative index difference to the previous stored
  entry, in `index_bits` bits (the paper: 8 bits for conv layers, 5 bits for fc
  layers). "When we need an index difference larger than the bound, we use the
  zero padding solution": a filler zero is stored `2**index_bits` positions
  after the previous entry. See `encode_sparse`.
- Weight sharing (sec. 3): an array with few distinct values is stored as a
  codebook (the shared values) and one index per stored entry; index 0 is the
  value 0, so filler zeros cost one index. See `quantize_to_codebook`.
- Huffman coding (sec. 4): both the codebook indices and the sparse index
  differences are Huffman coded with canonical codes. See `HuffmanCode`.
- `save_compressed` / `load_compressed` write and read a whole Keras model in
  the container below; `compression_report` gives the per-layer table of the
  paper's Tables 2-3 (non-zero fraction, bits per weight index and per offset
  before and after Huffman coding, compression ratio) for exactly the bytes
  that `save_compressed` writes.

Zero means "all bits zero": +0.0 is zero, -0.0 is a (stored) non-zero value, and
NaN or infinite values are stored like any other non-zero value, so every array
round-trips bit for bit.

Container layout (format version 1, all integers little-endian):

    magic            4 bytes   b"TFCZ"
    version          uint16    1
    sections, each:
        name length  uint16
        name         UTF-8
        payload len  uint64
        payload      bytes
        crc32        uint32    zlib.crc32 of name length, name, payload length
                               and payload (the whole section record)
    the last section is "end", with an empty payload; nothing may follow it.

Sections, in order:

    header           zlib-compressed UTF-8 JSON (a model with 150 variables has
                     a 23 kB header that compresses to 1.5 kB):
                     {"format", "version", "tfcompress_version",
                     "keras_version", "model_name", "model_class", "huffman",
                     "index_bits", "weights": [...]} with one entry per variable
                     of `model.weights`, in order: "path", "shape", "dtype",
                     "encoding", "sections" ({part: section name}) and, by
                     encoding, "codebook_size", "index_bits", "order",
                     "entries" and "streams" ({part: {"coding", "count",
                     "bits", "width"}}).
    model_config     zlib-compressed UTF-8 of `model.to_json()`.
    weights/<path>:<part>   the data of one variable (":raw", ":codebook",
                     ":values", ":indices", ":offsets"; "#<i>" is appended to
                     the path if two variables share one).
    end              empty.

Encodings of a variable (the smallest of those that apply is written):

    "zeros"            every element is +0 (no sections).
    "raw"              ":raw": the elements, little-endian, C order.
    "codebook"         ":codebook": the K-1 non-zero shared values (entry 0 is 0
                       and not stored); ":indices": one index per element.
    "sparse"           ":values": the stored entries (fillers included) as raw
                       elements; ":offsets": their index differences.
    "sparse+codebook"  ":codebook", ":indices" (one per stored entry, 0 for
                       fillers) and ":offsets".

A stream (":indices", ":offsets") is "fixed" (each symbol in `width` bits, MSB
first, packed) or "huffman" (a canonical code table, `HuffmanCode.to_bytes`,
followed by the MSB-first bit stream of `bits` bits); the smaller is written,
Huffman only when `huffman=True`. Offsets are the stored index differences
minus one, in [0, 2**index_bits - 1]; index widths are ceil(log2(K)).

Modules (all NumPy only but `container`, the Keras part):

    bits       argument checks and the bits of array elements, shared by the others
    huffman    HuffmanCode, huffman_code_lengths
    sparse     SparseArray, encode_sparse, decode_sparse
    codebook   quantize_to_codebook, MAX_CODEBOOK_SIZE
    streams    the fixed-width and Huffman-coded symbol streams
    plan       the encoding chosen for each weight, default_index_bits
    report     CompressionReport (the per-layer table)
    container  the Keras part: save_compressed, load_compressed, container_info,
               compression_report, the container errors and format constants

Example:
    >>> save_compressed(model, "model.tfcz")
    >>> restored = load_compressed("model.tfcz")
    >>> print(compression_report(model))
"""

# MAX_CODEBOOK_SIZE was a module-level name of tfcompress.coding (not in __all__).
from tfcompress.coding.codebook import MAX_CODEBOOK_SIZE as MAX_CODEBOOK_SIZE
from tfcompress.coding.codebook import quantize_to_codebook
from tfcompress.coding.container import (
    FORMAT_VERSION,
    MAGIC,
    SUPPORTED_VERSIONS,
    ChecksumError,
    ContainerError,
    TruncatedContainerError,
    UnsupportedVersionError,
    compression_report,
    container_info,
    load_compressed,
    save_compressed,
)
from tfcompress.coding.huffman import HuffmanCode, huffman_code_lengths
from tfcompress.coding.plan import default_index_bits
from tfcompress.coding.report import CompressionReport
from tfcompress.coding.sparse import SparseArray, decode_sparse, encode_sparse

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "SUPPORTED_VERSIONS",
    "ChecksumError",
    "CompressionReport",
    "ContainerError",
    "HuffmanCode",
    "SparseArray",
    "TruncatedContainerError",
    "UnsupportedVersionError",
    "compression_report",
    "container_info",
    "decode_sparse",
    "default_index_bits",
    "encode_sparse",
    "huffman_code_lengths",
    "load_compressed",
    "quantize_to_codebook",
    "save_compressed",
]
