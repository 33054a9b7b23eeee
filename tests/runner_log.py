"""How the GitHub runner reads a step's log: the commands it would act on."""

from __future__ import annotations

import re

# The runner ends a line at `\r\n`, `\r` or `\n` (a .NET StreamReader), then trims it.
_LINE_END = re.compile(r"\r\n|\r|\n")


def live_commands(output: str) -> list[str]:
    """The workflow commands the runner would act on in ``output``: lines that start with
    ``::`` (or hold a legacy ``##[``) outside ``::stop-commands::TOKEN`` ... ``::TOKEN::``.
    Our own framing (``::stop-commands::``, ``::add-mask::``) is left out."""
    live, token = [], None
    for raw in _LINE_END.split(output):
        line = raw.strip()
        if token is not None:
            token = None if line == f"::{token}::" else token
            continue
        if line.startswith("::stop-commands::"):
            token = line.removeprefix("::stop-commands::")
        elif line.startswith("::") or "##[" in line:
            live.append(line)
    return live
