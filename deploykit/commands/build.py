"""``deploykit build`` (and ``mode: build``): build once, push, verify."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from deploykit.actions import Actions
from deploykit.commands import EVENT, Command
from deploykit.settings import BUILD, Settings


def run(settings: Settings, actions: Actions, args: argparse.Namespace,
        env: Mapping[str, str]) -> None:
    from deploykit.build import run as build  # noqa: PLC0415 (only when it runs)

    build(settings, actions, env)


COMMAND = Command(
    "build", BUILD,
    "Build for every platform, push the event's tags, verify the digests.",
    f"  {EVENT} \\\n"
    "    INPUT_REGISTRY_PASSWORD=$GHCR_PAT deploykit build --image-repo org/app\n"
    "  deploykit build --platforms linux/amd64 --cache none --dry-run",
    run)
