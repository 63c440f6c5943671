"""tfcompress's command-line tools (installed as the package `tfcompress_tools`).

Run one as `tfcompress <command>` or `python tools/<command>.py`.
"""
