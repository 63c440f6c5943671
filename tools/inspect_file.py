"""Prints what a Deep Compression container (`tfcompress.coding.save_compressed`) holds.

Reads the file, checks the CRC32 of every section, rebuilds the model, and prints:
the container's header (format version, versions that wrote it, model), the
sections with their sizes, and the per-layer compression table of the paper
(non-zero weights, bits per index and per offset before/after Huffman coding,
codebook bits, ratio against 32-bit dense storage).

Usage:
    python tools/inspect_file.py compress_out/lenet_300_100.tfcz
    python tools/inspect_file.py model.tfcz --json=model_report.json
    python tools/inspect_file.py model.tfcz --sections      # also list every section

Exits with status 1 and a message naming the problem (not a container, unknown
version, a checksum error naming the section, a truncated file).
"""

import os

if __package__:  # tfcompress <command>: the tools are the package tfcompress_tools
    from . import _quiet
else:  # python tools/<command>.py
    import _quiet
_quiet.silence()



import json

from absl import app, flags

from tfcompress.fileio import write_atomic

FLAGS = flags.FLAGS
flags.DEFINE_string("json", None, "Also write the header and the report to this JSON file.")
flags.DEFINE_bool("sections", False, "List every section of the container with its size.")


def check_flags(argv):
    """Every argument checked before any work (`tfcompress.cli.run` calls it)."""
    from tfcompress import cli

    if len(argv) != 2:
        raise app.UsageError("give exactly one container path: tools/inspect_file.py PATH.tfcz")
    if not os.path.isfile(argv[1]):
        raise app.UsageError(f"{argv[1]}: no such file.")
    cli.check_json_path(FLAGS.json)


def main(argv):
    path = argv[1]
    from tfcompress import coding

    try:
        info = coding.container_info(path)
        model = coding.load_compressed(path)
    except ValueError as error:
        raise SystemExit(f"{path}: {error}") from None
    report = coding.compression_report(model)
    size = os.path.getsize(path)
    params = model.count_params()
    print(f"{path}: {size:,} bytes, format version {info['version']}")
    for key in ("tfcompress_version", "keras_version"):
        if key in info.get("header", {}):
            print(f"  {key.replace('_', ' ')}: {info['header'][key]}")
    print(f"  model {model.name!r}: {params:,} parameters, {4 * params:,} bytes as float32 "
          f"-> {4 * params / size:.1f}x")
    sections = info["sections"]
    print(f"  {len(sections)} sections, every CRC32 checked")
    if FLAGS.sections:
        width = max(len(s["name"]) for s in sections)
        for section in sections:
            print(f"    {section['name']:<{width}}  {section['bytes']:>10,} bytes")
    print()
    print(report)
    if FLAGS.json:
        payload = {"path": path, "bytes": size, "params": params, "container": info,
                   "report": report.to_dict()}
        write_atomic(FLAGS.json, json.dumps(payload, indent=2, default=str))
        print(f"\nwrote {FLAGS.json}")
    return 0


def run_tool(argv=None):
    """Runs this tool through the shared harness (`tfcompress.cli.run`)."""
    from tfcompress.cli import run

    run(main, check=check_flags, argv=argv)


if __name__ == "__main__":
    run_tool()
