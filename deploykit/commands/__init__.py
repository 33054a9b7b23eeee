"""The subcommands at the edge (``deploykit COMMAND``), one module per command.

Each module defines its :class:`Command`: the mode it runs under, its help, the inputs it
takes as flags, its own arguments, and ``run``, which takes what it needs from the parsed
arguments and calls the library. ``run`` imports the library only when the command runs:
the CLI loads every command's definition to build its parser (start-up cost,
``tests/test_imports.py``). argparse lives here and in :mod:`deploykit.cli` only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deploykit.actions import Actions
from deploykit.settings import Settings

Run = Callable[[Settings, Actions, argparse.Namespace, Mapping[str, str]], None]

LOGIN = "registry", "image_repo", "registry_username", "registry_password"
EVENT = "GITHUB_EVENT_NAME=push GITHUB_REF=refs/heads/pre-release GITHUB_SHA=$(git rev-parse HEAD)"


def no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command whose flags are all inputs."""


@dataclass(frozen=True)
class Command:
    name: str
    mode: str  # the settings mode it runs under
    summary: str
    examples: str
    run: Run  # (settings, actions, its parsed arguments, the environment)
    inputs: tuple[str, ...] = ()  # the inputs it takes as flags; default: those of its mode
    arguments: Callable[[argparse.ArgumentParser], None] = no_arguments  # its own, not inputs
    json_help: str = "Print the outputs as one JSON object."
