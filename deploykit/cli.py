"""The ``deploykit`` command line, and the one place errors become exit 1."""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import NoReturn

from deploykit import __version__
from deploykit.actions import Actions
from deploykit.commands import LOGIN, Command, build, deploy, history, resolve, tags
from deploykit.errors import DeployError, DeploykitError, OutputFileError
from deploykit.input_values import parse_compose_env
from deploykit.inputs import INPUTS, SPECS, InputSpec, for_terminal
from deploykit.settings import (
    BUILD,
    DEPLOY,
    ROLLBACK,
    Settings,
    kebab_spellings,
    load_settings,
    read_inputs,
    unused_inputs,
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
for --image-tag). Booleans are true or false. Production environments take only
vX.Y.Z or a digest; latest is refused before anything changes.

Run deploykit COMMAND --help for a command's flags and examples.
"""
HELP_WIDTH = 100


COMMANDS: dict[str, Command] = {command.name: command for command in (
    build.COMMAND, deploy.DEPLOY_COMMAND, deploy.ROLLBACK_COMMAND, tags.COMMAND,
    resolve.COMMAND, history.COMMAND)}

_COMMON = (*LOGIN, "dry_run", "github_token", "github_records")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help within HELP_WIDTH columns (or the terminal's, when narrower)."""

    def __init__(self, prog: str) -> None:
        columns = min(HELP_WIDTH, shutil.get_terminal_size((HELP_WIDTH, 24)).columns)
        super().__init__(prog, width=columns - 2, max_help_position=28)


class _Parser(argparse.ArgumentParser):
    """The top-level parser; ``commands`` are its subcommands' parsers (flag hints)."""

    commands: dict[str, argparse.ArgumentParser]


def build_parser() -> _Parser:
    # allow_abbrev=False: a prefix of a flag (`--image-t`) is an error, never another input
    parser = _Parser(
        prog="deploykit", description=DESCRIPTION, formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    parser.commands = {}
    parser.add_argument("--version", action="version", version=f"deploykit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in COMMANDS.items():
        command = sub.add_parser(
            name, help=spec.summary, description=textwrap.fill(spec.summary, HELP_WIDTH - 2),
            epilog=f"examples:\n{spec.examples}\n\n{_SECRETS_NOTE}",
            formatter_class=_HelpFormatter, allow_abbrev=False)
        parser.commands[name] = command
        command.add_argument("--json", action="store_true", help=spec.json_help)
        spec.arguments(command)
        _add_input_flags(command, spec)
    return parser


def _parse_args(parser: _Parser, argv: list[str]) -> argparse.Namespace:
    """``parse_args``, except that a flag the command does not know is reported by the
    command (its usage, not the top level's), with the closest flag it has."""
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    command = parser.commands.get(args.command or "")
    if command is None:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    message = f"unrecognized arguments: {' '.join(extras)}"
    for extra in (text.partition("=")[0] for text in extras if text.startswith("-")):
        close = difflib.get_close_matches(extra, _flags_of(command), n=1, cutoff=0.6)
        others = [name for name, other in parser.commands.items() if extra in _flags_of(other)]
        if close:
            message += f"\ndid you mean {close[0]}? ({extra} is no flag of " \
                       f"deploykit {args.command})"
        elif others:
            message += f"\n{extra} is a flag of deploykit {', '.join(others)}, not of " \
                       f"deploykit {args.command}"
        if close or others:
            break
    command.error(message)


def _flags_of(command: argparse.ArgumentParser) -> list[str]:
    return [flag for action in command._actions for flag in action.option_strings]


_SECRETS_NOTE = textwrap.fill(
    "Secrets are never flags: set INPUT_REGISTRY_PASSWORD, INPUT_GITHUB_TOKEN and "
    "INPUT_COMPOSE_ENV in the environment.", HELP_WIDTH - 2)


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
        help_text = spec.description.replace("%", "%%").replace("`", "")
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


_RUNS = (BUILD, DEPLOY, ROLLBACK)  # the commands that are a mode's run (the action's own)


def _load(args: argparse.Namespace, env: Mapping[str, str], actions: Actions) -> Settings:
    """Settings from INPUT_* and, for a subcommand, its flags (and its mode)."""
    if args.command is None:
        return load_settings(env, gate=True)
    overrides = {**_overrides(args), "mode": COMMANDS[args.command].mode}
    if args.command == resolve.COMMAND.name:
        overrides["image_repo"] = resolve.image_repo(args)
    origin_read = args.command != "history" and not (
        overrides.get("image_repo") or read_inputs(env).get("image_repo")
        or env.get("GITHUB_REPOSITORY") or env.get("GITHUB_ACTIONS") == "true")
    if origin_read and (repository := _image_repo_from_origin(actions)):
        overrides["image_repo"] = repository
    return load_settings(env, overrides, image_required=args.command != "history",
                         gate=args.command in _RUNS, origin_read=origin_read)


def _naming(args: argparse.Namespace, actions: Actions) -> Callable[[str], str]:
    """How texts name inputs: as a workflow's `with:` writes them in Actions, or as flags
    and INPUT_* variables on a terminal."""
    if actions.in_actions or args.command is None:
        return str
    command = COMMANDS[args.command]
    flags = frozenset(spec.name for spec in INPUTS
                      if spec.kind != "secret" and _takes(command, spec))
    return lambda text: for_terminal(text, flags)


def _warn_unused(actions: Actions, args: argparse.Namespace, env: Mapping[str, str],
                 settings: Settings, naming: Callable[[str], str]) -> None:
    """One warning naming the inputs set for nothing: the mode never reads them."""
    if args.command not in (None, *_RUNS):
        return
    unused = unused_inputs(env, _overrides(args), settings.mode)
    if not unused:
        return
    modes = " and ".join(sorted({mode for name in unused for mode in SPECS[name].modes}))
    names = ", ".join(naming(f"`{name}`") for name in unused)
    one = len(unused) == 1
    actions.warning(f"{names} {'is' if one else 'are'} set, but mode {settings.mode} never "
                    f"reads {'it' if one else 'them'} ({'it applies' if one else 'they apply'} "
                    f"to {modes}). "
                    f"Remove {'it' if one else 'them'} from this step, or run the mode "
                    f"{'it is' if one else 'they are'} for.",
                    title=f"Inputs unused in mode {settings.mode}")


def _check_locally(command: str, settings: Settings) -> None:
    """What a command can check on this machine, before its first network call."""
    if command == BUILD and not settings.dry_run:
        from deploykit.build import build_paths  # noqa: PLC0415 (the handler's module)

        build_paths(settings)


def _image_repo_from_origin(actions: Actions) -> str | None:
    """On a terminal that names no image repository: the checkout's `origin` remote (None
    without one: the settings report it with every other problem)."""
    from deploykit.git import origin_repository  # noqa: PLC0415 (only a terminal needs git)

    repository = origin_repository()
    if repository is not None:
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
    args = _parse_args(parser, argv)
    if from_action:
        env.setdefault("GITHUB_ACTIONS", "true")
    elif args.command is None:
        parser.print_help()
        return 2
    actions = Actions(env, json_outputs=bool(getattr(args, "json", False)))
    _mask_secret_inputs(actions, env)
    naming = _naming(args, actions)
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
        _warn_unused(actions, args, env, settings, naming)
        _check_locally(command, settings)
        # env: what the command's children get (build secrets, DOCKER_HOST)
        COMMANDS[command].run(settings, actions, args, env)
        return 0
    except DeploykitError as exc:
        if isinstance(exc, DeployError) and "status" not in actions.outputs:
            _late_output(actions, "status", exc.status, actions.error)
        actions.error(naming(str(exc)), title=naming(exc.title))
        return 1
    except KeyboardInterrupt:
        actions.error("Interrupted.", title="deploykit interrupted")
        return 130
    finally:
        if settings_loaded and args.command in (*_RUNS, None):
            _late_output(actions, "duration_seconds", f"{time.monotonic() - started:.1f}",
                         actions.warning)  # the command's own outputs are written already
        actions.print_outputs()


def _mask_secret_inputs(actions: Actions, env: Mapping[str, str]) -> None:
    """Mask first, before anything can be printed; a kebab spelling (refused) too. A value
    over its length bound is refused unread (its error gives only its length): masking
    runs patterns over the value, which must never see a megabyte."""
    for given in (read_inputs(env), kebab_spellings(env)):
        for spec in INPUTS:
            value = given.get(spec.name, "")
            if spec.kind != "secret" or len(value) > spec.length_limit:
                continue
            if spec.name == "compose_env":
                _mask_compose_env(actions, value)
            else:
                actions.mask(value)


def _late_output(actions: Actions, name: str, value: str,
                 report: Callable[..., None]) -> None:
    """An output set once the command has ended: a GITHUB_OUTPUT that cannot take it is
    reported (``report``), never a traceback."""
    try:
        actions.set_output(name, value)
    except OutputFileError as exc:
        report(str(exc), title=exc.title)


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
