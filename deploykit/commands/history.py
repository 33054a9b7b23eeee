"""``deploykit history``: past deploys and rollbacks, from the file and the engine."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from deploykit.actions import Actions
from deploykit.commands import Command
from deploykit.settings import DEPLOY, Settings, read_inputs


def run(settings: Settings, actions: Actions, args: argparse.Namespace,
        env: Mapping[str, str]) -> None:
    from deploykit.history import show  # noqa: PLC0415 (only when it runs)

    # `--image-repo` / `--registry` filter only when given (flag or input), not as the
    # default from GITHUB_REPOSITORY: it often differs from the deployed image.
    given = {**read_inputs(env), **{name: str(value) for name in ("registry", "image_repo")
                                    if (value := getattr(args, name, None))}}
    show(settings, actions, env,
         repository=settings.image_repo if given.get("image_repo") else None,
         registry=settings.registry if given.get("registry") else None,
         limit=int(args.limit or 0), as_json=bool(args.json))


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}")
    return int(text)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_count, default=20, metavar="N",
                        help="Show the last N entries; 0 for all (default: 20).")


COMMAND = Command(
    "history", DEPLOY,
    "Show past deploys and rollbacks: the history file and the releases the engine's "
    "containers carry (labels).",
    "  deploykit history\n  deploykit history --environment production --project-name shop\n"
    "  deploykit history --image-repo org/app --limit 5 --json",
    run, inputs=("registry", "image_repo", "environment", "project_name", "state_dir"),
    arguments=arguments, json_help="Print the entries as a JSON list (oldest first).")
