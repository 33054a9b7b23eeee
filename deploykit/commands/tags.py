"""``deploykit tags``: the tags a build of this commit would publish."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from deploykit.actions import Actions
from deploykit.commands import EVENT, LOGIN, Command
from deploykit.settings import BUILD, Settings


def run(settings: Settings, actions: Actions, args: argparse.Namespace,
        env: Mapping[str, str]) -> None:
    from deploykit.plan import plan_command  # noqa: PLC0415 (only when it runs)

    plan_command(settings, actions)


COMMAND = Command(
    "tags", BUILD,
    "Print the tags a build would publish (new or existing, with digests).",
    "  deploykit tags --registry ghcr.io --image-repo org/app   # from the local git checkout\n"
    f"  {EVENT} \\\n    deploykit tags --registry ghcr.io --image-repo org/app",
    run, inputs=(*LOGIN, "version", "latest"))
