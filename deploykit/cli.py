"""The ``deploykit`` command line, and the one place errors become exit 1."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from importlib import import_module
from typing import NoReturn

from deploykit import __version__
from deploykit.actions import Actions
from deploykit.errors import DeployError, DeploykitError, InputError
from deploykit.reference import parse_reference
from deploykit.settings import (
    BUILD,
    DEPLOY,
    INPUTS,
    ROLLBACK,
    InputSpec,
    Settings,
    load_settings,
    parse_compose_env,
    read_inputs,
)

DESCRIPTION = """\
Build an image once, publish it under immutable tags, deploy by pull + up only.

  deploykit tags                      which tags a build of this commit would publish
  deploykit build                     multi-arch buildx build + push, digests verified
  deploykit deploy --environment staging --image-tag staging-latest
  deploykit deploy --environment production --image-tag v1.4.2
  deploykit rollback --environment production
  deploykit resolve ghcr.io/org/app:v1.4.2   print the digest a tag points to
  deploykit history                   past deploys and rollbacks

Every flag is also read from the action input of the same name (INPUT_IMAGE_TAG
for --image-tag). Booleans are `true` or `false`. Production environments take
only `vX.Y.Z` or a digest; `latest` is refused before anything changes.
"""


@dataclass(frozen=True)
class Command:
    mode: str  # the settings mode it runs under
    handler: str  # "module:function", imported only when the command runs
    summary: str
    examples: str
    inputs: tuple[str, ...] = ()  # the inputs it takes as flags; default: those of its mode


_EVENT = "GITHUB_EVENT_NAME=push GITHUB_REF=refs/heads/pre-release GITHUB_SHA=$(git rev-parse HEAD)"
_LOGIN = "registry", "image_repo", "registry_username", "registry_password"

COMMANDS: dict[str, Command] = {
    "build": Command(
        BUILD, "deploykit.build:run",
        "Build for every platform, push the event's tags, verify the digests.",
        f"  {_EVENT} \\\n"
        "    INPUT_REGISTRY_PASSWORD=$GHCR_PAT deploykit build --image-repo org/app\n"
        "  deploykit build --platforms linux/amd64 --cache none --dry-run"),
    "deploy": Command(
        DEPLOY, "deploykit.deploy_command:deploy",
        "Pull + up the given tag: health-gated, smoke-tested, rolled back on failure.",
        "  deploykit deploy --environment staging --image-tag staging-latest\n"
        "  deploykit deploy --environment production --image-tag v1.4.2 \\\n"
        "    --smoke-url https://shop.example.com/health --dry-run"),
    "rollback": Command(
        ROLLBACK, "deploykit.deploy_command:rollback",
        "Deploy the previous successful image of the environment.",
        "  deploykit rollback --environment production            # one release back\n"
        "  deploykit rollback --environment production --image-tag v1.4.1"),
    "tags": Command(
        BUILD, "deploykit.plan:plan_command",
        "Print the tags a build would publish (new or existing, with digests).",
        "  deploykit tags --registry ghcr.io --image-repo org/app   # from the local git "
        "checkout\n"
        f"  {_EVENT} \\\n    deploykit tags --registry ghcr.io --image-repo org/app",
        inputs=(*_LOGIN, "version", "latest")),
    "resolve": Command(
        DEPLOY, "deploykit.registry:resolve_command",
        "Print the digest of REGISTRY/REPO:TAG. The credentials go only to `--registry` "
        "(default ghcr.io): a REF on another registry is read anonymously.",
        "  deploykit resolve ghcr.io/org/app:v1.4.2\n"
        "  INPUT_REGISTRY_PASSWORD=$GHCR_PAT deploykit resolve --registry-username me "
        "ghcr.io/org/app:v1.4.2\n"
        "  INPUT_REGISTRY_PASSWORD=$PASS deploykit resolve --registry 127.0.0.1:5001 "
        "--registry-username me 127.0.0.1:5001/org/app:v1",
        inputs=("registry", "registry_username", "registry_password")),
    "history": Command(
        DEPLOY, "deploykit.history:show",
        "Show past deploys and rollbacks: the history file and the releases the engine's "
        "containers carry (labels).",
        "  deploykit history\n  deploykit history --environment production --project-name shop\n"
        "  deploykit history --image-repo org/app --limit 5 --json",
        inputs=("registry", "image_repo", "environment", "project_name", "state_dir")),
}

_COMMON = (*_LOGIN, "dry_run", "github_token", "github_records")


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a prefix of a flag (`--image-t`) is an error, never another input
    parser = argparse.ArgumentParser(
        prog="deploykit", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"deploykit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in COMMANDS.items():
        command = sub.add_parser(
            name, help=spec.summary, description=spec.summary,
            epilog=f"examples:\n{spec.examples}\n\n{_SECRETS_NOTE}",
            formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        command.add_argument("--json", action="store_true", help=_JSON_HELP.get(
            name, "Print the outputs as one JSON object."))
        if name == "resolve":
            command.add_argument("reference", help="REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST")
        if name == "history":
            command.add_argument("--limit", type=_count, default=20, metavar="N",
                                 help="Show the last N entries; 0 for all (default: 20).")
        _add_input_flags(command, spec)
    return parser


_JSON_HELP = {"history": "Print the entries as a JSON list (oldest first)."}


def _count(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}")
    return int(text)


_SECRETS_NOTE = ("Secrets are never flags: set INPUT_REGISTRY_PASSWORD, INPUT_GITHUB_TOKEN and "
                 "INPUT_COMPOSE_ENV in the environment.")


def _takes(command: Command, spec: InputSpec) -> bool:
    if spec.name == "mode":
        return False
    if command.inputs:
        return spec.name in command.inputs
    return spec.name in _COMMON or command.mode in spec.modes


def _add_input_flags(command: argparse.ArgumentParser, spec_of_command: Command) -> None:
    for spec in INPUTS:
        if not _takes(spec_of_command, spec):
            continue
        if spec.kind == "secret":
            # Secrets never travel in argv, where any process can read them.
            command.set_defaults(**{spec.name: None})
            continue
        help_text = spec.description.replace("%", "%%")
        if spec.default:
            help_text += f" (default: {spec.default})"
        kwargs: dict[str, object] = {"dest": spec.name, "help": help_text, "default": None}
        if spec.kind == "choice":
            kwargs["choices"] = spec.choices
        if spec.kind == "bool":
            kwargs.update(nargs="?", const="true", choices=("true", "false"))
            kwargs["help"] = help_text + " A bare flag means true."
        if spec.kind == "lines":
            kwargs["action"] = "append"
            kwargs["help"] = help_text + " Repeat the flag for several."
        command.add_argument(spec.flag, **kwargs)  # type: ignore[arg-type]


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides: dict[str, str] = {}
    for spec in INPUTS:
        value = getattr(args, spec.name, None)
        if value is None:
            continue
        overrides[spec.name] = "\n".join(value) if isinstance(value, list) else str(value)
    return overrides


def _handler(path: str) -> Callable[..., None]:
    module_name, function_name = path.split(":")
    handler: Callable[..., None] = getattr(import_module(module_name), function_name)
    return handler


def _load(args: argparse.Namespace, env: Mapping[str, str], actions: Actions) -> Settings:
    """Settings from INPUT_* and, for a subcommand, its flags (and its mode)."""
    if args.command is None:
        return load_settings(env)
    overrides = {**_overrides(args), "mode": COMMANDS[args.command].mode}
    if args.command == "resolve":
        # REF names its repository. Its registry stays apart from `registry`: the
        # credentials belong to `registry` and go to no other host (resolve_command).
        overrides["image_repo"] = parse_reference(args.reference).repository
    elif args.command != "history" and not (
            overrides.get("image_repo") or read_inputs(env).get("image_repo")
            or env.get("GITHUB_REPOSITORY") or env.get("GITHUB_ACTIONS") == "true"):
        overrides["image_repo"] = _image_repo_from_origin(actions)
    return load_settings(env, overrides, image_required=args.command != "history")


def _image_repo_from_origin(actions: Actions) -> str:
    """On a terminal that names no image repository: the checkout's `origin` remote."""
    from deploykit.git import origin_repository  # noqa: PLC0415 (only a terminal needs git)

    repository = origin_repository()
    if repository is None:
        raise InputError("image_repo", "is not set (no `--image-repo`, no GITHUB_REPOSITORY) "
                         "and this directory is no git checkout whose `origin` remote names "
                         "an `<owner>/<repo>`.", hint="Pass `--image-repo <org>/<app>`, or run "
                         "in a clone of the repository (`git remote -v` shows its origin).")
    actions.info(f"image_repo: {repository}, from the `origin` remote of this checkout.")
    return repository


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    from_action: bool = False,
) -> int:
    """Run one command; return the exit code. Expected failures never raise."""
    env = dict(os.environ if env is None else env)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if from_action:
        env.setdefault("GITHUB_ACTIONS", "true")
    elif args.command is None:
        parser.print_help()
        return 2
    actions = Actions(env, json_outputs=bool(getattr(args, "json", False)))
    raw_inputs = read_inputs(env)
    for spec in INPUTS:  # mask first, before anything can be printed
        if spec.kind == "secret" and spec.name != "compose_env":
            actions.mask(raw_inputs.get(spec.name))
    _mask_compose_env(actions, raw_inputs.get("compose_env", ""))
    started = time.monotonic()
    settings_loaded = False
    try:
        settings = _load(args, env, actions)
        command = args.command or settings.mode
        settings_loaded = True
        actions.summary_enabled = settings.summary
        for secret in settings.secrets():
            actions.mask(secret)
        actions.mask_env(settings.compose_env)
        args.env = env  # handlers pass it to child processes (build secrets, DOCKER_HOST)
        _handler(COMMANDS[command].handler)(settings, actions, args)
        return 0
    except DeploykitError as exc:
        if isinstance(exc, DeployError) and "status" not in actions.outputs:
            actions.set_output("status", exc.status)
        actions.error(str(exc), title=exc.title)
        return 1
    except KeyboardInterrupt:
        actions.error("Interrupted.", title="deploykit interrupted")
        return 130
    finally:
        if settings_loaded and args.command in ("build", "deploy", "rollback", None):
            actions.set_output("duration_seconds", f"{time.monotonic() - started:.1f}")
        actions.print_outputs()


def _mask_compose_env(actions: Actions, text: str) -> None:
    """compose_env by its rule; text that does not parse is masked whole, line by line
    (its error names only a line number, but nothing of it may show)."""
    try:
        actions.mask_env(parse_compose_env(text))
    except DeploykitError:
        actions.mask(text)


def run_action() -> int:
    """Entry point of the action container: the mode comes from INPUT_MODE."""
    return main([], from_action=True)


def exit_process(code: int) -> NoReturn:
    """End the process once :func:`main` returned: outputs, summary and history are
    written, children and the lock are gone. The interpreter's own teardown (freeing the
    SDK's and requests' modules) would add 0.05-0.15 s to every command on the test bed."""
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):  # a closed pipe changes nothing now
            stream.flush()
    os._exit(code)


def run() -> NoReturn:
    """The ``deploykit`` console script and ``python -m deploykit``."""
    exit_process(main())


__all__ = ["Settings", "build_parser", "exit_process", "main", "run", "run_action"]
