"""`tfcompress <command> [flags]`: the console script that runs one of the tools.

Commands: compress, evaluate, benchmark, inspect, sensitivity, deploy (`tools/<name>.py`;
`inspect` is `tools/inspect_file.py`). `tfcompress <command> --help` lists the
command's flags.
"""

import importlib
import os
import sys

COMMANDS = {
    "compress": "compress",
    "evaluate": "evaluate",
    "benchmark": "benchmark",
    "inspect": "inspect_file",
    "sensitivity": "sensitivity",
    "deploy": "deploy",
}


def main(argv=None):
    """Dispatches `tfcompress <command> ...` to the command's tool module."""
    argv = list(sys.argv if argv is None else argv)
    names = ", ".join(COMMANDS)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(f"usage: tfcompress <command> [flags]   (commands: {names})\n"
              "       tfcompress <command> --help    lists the command's flags")
        raise SystemExit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"tfcompress: error: unknown command {command!r}; allowed: {names}",
              file=sys.stderr)
        raise SystemExit(2)
    tool_argv = [f"tfcompress {command}"] + argv[2:]
    if __package__:
        quiet = importlib.import_module(f"{__package__}._quiet")
        quiet.silence(tool_argv)
        tool = importlib.import_module(f"{__package__}.{COMMANDS[command]}")
    else:  # python tools/__main__.py
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        importlib.import_module("_quiet").silence(tool_argv)
        tool = importlib.import_module(COMMANDS[command])
    tool.run_tool(tool_argv)


if __name__ == "__main__":
    main()
