"""``deploykit deploy`` and ``deploykit rollback`` (and their modes).

What they run is :mod:`deploykit.commands.deploy_run`, imported only when one runs: it
loads compose and the docker CLI, which the other commands never need.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from deploykit.actions import Actions
from deploykit.commands import Command
from deploykit.settings import DEPLOY, ROLLBACK, Settings


def run_deploy(settings: Settings, actions: Actions, args: argparse.Namespace,
               env: Mapping[str, str]) -> None:
    from deploykit.commands.deploy_run import deploy  # noqa: PLC0415 (only when it runs)

    deploy(settings, actions, env)


def run_rollback(settings: Settings, actions: Actions, args: argparse.Namespace,
                 env: Mapping[str, str]) -> None:
    from deploykit.commands.deploy_run import rollback  # noqa: PLC0415 (only when it runs)

    rollback(settings, actions, env)


DEPLOY_COMMAND = Command(
    "deploy", DEPLOY,
    "Pull + up the given tag: health-gated, smoke-tested, rolled back on failure.",
    "  deploykit deploy --environment staging --image-tag staging-latest\n"
    "  deploykit deploy --environment production --image-tag v1.4.2 \\\n"
    "    --smoke-url https://shop.example.com/health --dry-run",
    run_deploy)
ROLLBACK_COMMAND = Command(
    "rollback", ROLLBACK,
    "Deploy the previous successful image of the environment.",
    "  deploykit rollback --environment production            # one release back\n"
    "  deploykit rollback --environment production --image-tag v1.4.1",
    run_rollback)
