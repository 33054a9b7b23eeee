"""Inputs, read once into one frozen :class:`Settings` object.

The table of every input is :mod:`deploykit.inputs`; one value is parsed by
:mod:`deploykit.input_values`. Here: reading them all, every problem reported at once,
and the checks across inputs (the mode's needs, the deploy gate, paths inside the
workspace). This module does no I/O beyond reading the mapping it is given.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from deploykit import input_values as parse
from deploykit.errors import DeploykitError, InputError, PolicyError, shown
from deploykit.inputs import (
    BUILD,
    DEPLOY,
    INPUTS,
    ROLLBACK,
    RUN,
    SPECS,
    InputSpec,
)
from deploykit.policy import check_deploy_target


@dataclass(frozen=True)
class GitHubContext:
    event_name: str = ""
    ref: str = ""
    sha: str = ""
    repository: str = ""
    actor: str = ""
    run_id: str = ""
    run_attempt: str = ""
    server_url: str = "https://github.com"
    api_url: str = "https://api.github.com"
    workspace: str = "."

    @property
    def run_url(self) -> str:
        if not (self.repository and self.run_id):
            return ""
        return f"{self.server_url}/{self.repository}/actions/runs/{self.run_id}"


@dataclass(frozen=True)
class Settings:
    mode: str
    registry: str
    image_repo: str
    registry_username: str
    registry_password: str = field(repr=False)
    image_tag: str
    environment: str
    production_environments: tuple[str, ...]
    version: str
    platforms: tuple[str, ...]
    context: str
    dockerfile: str
    target: str
    build_args: tuple[tuple[str, str], ...]
    build_secrets: tuple[tuple[str, str], ...]
    cache: str
    provenance: bool
    sbom: bool
    latest: str
    skip_build_if_image_present: bool
    force_redeploy: bool
    dry_run: bool
    compose_file: str
    project_dir: str
    project_name: str
    compose_env: tuple[tuple[str, str], ...] = field(repr=False)
    health_timeout: int
    health_settle: int
    smoke_url: tuple[str, ...]
    smoke_status: int
    smoke_contains: str
    smoke_timeout: int
    rollback_on_failure: bool
    lock_timeout: int
    state_dir: str
    github_token: str = field(repr=False)
    github_records: str
    summary: bool
    environment_url: str
    github: GitHubContext
    build_date: datetime
    orchestrator: str = "compose"
    verify_provenance: bool = False
    trusted_root: str = ""
    provenance_repository: str = ""
    keep_images: int = 5

    @property
    def image_name(self) -> str:
        """``registry/repo`` without tag."""
        return f"{self.registry}/{self.image_repo}"

    @property
    def is_production(self) -> bool:
        return self.environment.strip().lower() in self.production_environments

    def secrets(self) -> tuple[str, ...]:
        """The secrets masked whole, always. ``compose_env`` is masked by its own rule
        (:func:`deploykit.actions.env_secrets`): a port or ``true`` stays readable."""
        return tuple(v for v in (self.registry_password, self.github_token) if v)


def read_inputs(env: Mapping[str, str]) -> dict[str, str]:
    """Raw input strings from ``INPUT_<NAME>``, the spelling action.yml declares.

    ``INPUT_DRY-RUN`` (``dry-run:`` in a workflow) is never read as ``dry_run``: the runner
    also exports every declared default (``INPUT_DRY_RUN=false``), so which one counts
    would be a guess. :func:`load_settings` refuses it (:func:`kebab_spellings`).
    """
    raw: dict[str, str] = {}
    for spec in INPUTS:
        value = env.get(f"INPUT_{spec.name.upper()}", "")
        if value.strip():
            raw[spec.name] = value
    return raw


def kebab_spellings(env: Mapping[str, str]) -> dict[str, str]:
    """Inputs given in the undeclared ``-`` spelling: input name -> the raw value."""
    return {spec.name: env[key] for spec in INPUTS if "_" in spec.name
            for key in (f"INPUT_{spec.kebab.upper()}",) if key in env}


# What each mode cannot run without, checked with every other input (all problems at once).
MODE_REQUIRES: dict[str, tuple[str, ...]] = {
    BUILD: ("image_repo",), DEPLOY: ("image_repo", "environment", "image_tag"),
    ROLLBACK: ("image_repo", "environment"),
}


class InvalidInputs(InputError):
    """Several inputs are invalid: one error (one ``::error``) that lists them all."""

    title = "Invalid inputs"

    def __init__(self, errors: list[DeploykitError], names: list[str]) -> None:
        items = "\n".join("- " + str(error).replace("\n", "\n  ") for error in errors)
        DeploykitError.__init__(self, f"{len(errors)} inputs are invalid:\n{items}",
                                title=f"Invalid inputs: {', '.join(n for n in names if n)}")
        self.input_name = ", ".join(n for n in names if n)
        self.errors = errors


_Value = TypeVar("_Value")


class _Problems:
    """Every input's checks run; the errors are raised together at the end."""

    def __init__(self) -> None:
        self.errors: list[DeploykitError] = []
        self.names: list[str] = []  # the input each error is about, in order
        self.failed: set[str] = set()

    def check(self, name: str, thunk: Callable[[], _Value], fallback: _Value) -> _Value:
        """``thunk()``, or ``fallback`` once it (or an earlier check of ``name``) failed."""
        if name in self.failed:
            return fallback
        try:
            return thunk()
        except (InputError, PolicyError) as exc:
            self.failed.add(getattr(exc, "input_name", name))
            self.names.append(getattr(exc, "input_name", name))
            self.errors.append(exc)
            return fallback

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise InvalidInputs(self.errors, self.names)


def load_settings(
    env: Mapping[str, str], overrides: Mapping[str, str] | None = None, *,
    image_required: bool = True, gate: bool = False, origin_read: bool = False,
) -> Settings:
    """Read every input once (``INPUT_*`` then CLI overrides) and validate it.

    Every problem is reported at once: one :class:`InvalidInputs` when there are several.
    ``image_required=False`` (``deploykit history``) lets ``image_repo`` stay empty.
    ``gate=True`` (the build, deploy and rollback runs) also checks what the mode needs
    (:data:`MODE_REQUIRES`) and the deploy gate on ``environment`` and ``image_tag``.
    """
    problems = _Problems()
    raw = read_inputs(env)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None and v != ""})
    for name in kebab_spellings(env):
        problems.check(name, partial(_kebab_refused, SPECS[name]), None)
    for spec in INPUTS:
        problems.check(spec.name, partial(_bounded, spec, raw.get(spec.name, "")), None)
    values = {spec.name: problems.check(
        spec.name, partial(parse.input_value, spec, raw.get(spec.name, spec.default)),
        _fallback(spec))
        for spec in INPUTS}
    if "mode" in problems.failed:  # what else is needed or unused depends on the mode
        raise next(e for e in problems.errors if getattr(e, "input_name", "") == "mode")
    github = _github_context(env)
    mode = str(values["mode"])
    if env.get("GITHUB_ACTIONS") == "true":
        _paths_inside_workspace(problems, github.workspace, mode, values)

    def text(name: str) -> str:
        return str(values[name])

    def number(name: str) -> int:
        return int(values[name])  # type: ignore[call-overload, no-any-return]

    settings = Settings(
        mode=mode,
        registry=problems.check("registry", lambda: parse.registry(text("registry")), ""),
        image_repo=problems.check("image_repo", lambda: parse.image_repo(
            text("image_repo") or github.repository.lower(),
            required=image_required, origin_read=origin_read), ""),
        registry_username=text("registry_username") or github.actor,
        registry_password=text("registry_password"),
        image_tag=text("image_tag").strip(),
        environment=problems.check("environment", lambda: parse.environment(text("environment")),
                                   ""),
        production_environments=problems.check(
            "production_environments",
            lambda: parse.production_environments(text("production_environments")), ()),
        version=text("version").strip(),
        platforms=problems.check("platforms", lambda: parse.platforms(text("platforms")), ()),
        context=text("context"),
        dockerfile=text("dockerfile"),
        target=text("target"),
        build_args=problems.check(
            "build_args",
            lambda: parse.key_values("build_args", parse.lines(values["build_args"])), ()),
        build_secrets=problems.check(
            "build_secrets",
            lambda: parse.build_secrets(parse.lines(values["build_secrets"])), ()),
        cache=text("cache"),
        provenance=bool(values["provenance"]),
        sbom=bool(values["sbom"]),
        latest=text("latest"),
        skip_build_if_image_present=bool(values["skip_build_if_image_present"]),
        force_redeploy=bool(values["force_redeploy"]),
        dry_run=bool(values["dry_run"]),
        compose_file=text("compose_file"),
        project_dir=text("project_dir"),
        project_name=problems.check("project_name",
                                    lambda: parse.project_name(text("project_name")), ""),
        compose_env=problems.check("compose_env",
                                   lambda: parse.parse_compose_env(text("compose_env")), ()),
        health_timeout=number("health_timeout"),
        health_settle=problems.check("health_settle", lambda: _settle_within_timeout(
            number("health_settle"), number("health_timeout"),
            checked="health_timeout" not in problems.failed), 0),
        smoke_url=problems.check("smoke_url", lambda: tuple(
            parse.http_url("smoke_url", url) for url in parse.lines(values["smoke_url"])), ()),
        smoke_status=number("smoke_status"),
        smoke_contains=text("smoke_contains"),
        smoke_timeout=number("smoke_timeout"),
        rollback_on_failure=bool(values["rollback_on_failure"]),
        lock_timeout=number("lock_timeout"),
        state_dir=text("state_dir") or env.get("DEPLOYKIT_STATE_DIR", ""),
        github_token=text("github_token"),
        github_records=text("github_records"),
        summary=bool(values["summary"]),
        environment_url=problems.check("environment_url", lambda: parse.public_url(
            "environment_url", text("environment_url").strip())
            if text("environment_url").strip() else "", ""),
        github=github,
        build_date=problems.check("SOURCE_DATE_EPOCH", lambda: parse.build_date(env),
                                  datetime.now(UTC)),
        orchestrator=text("orchestrator"),
        verify_provenance=bool(values["verify_provenance"]),
        trusted_root=text("trusted_root").strip(),
        provenance_repository=problems.check("provenance_repository", lambda: (
            parse.provenance_repository(text("provenance_repository"))), ""),
        keep_images=number("keep_images"),
    )
    if gate and mode in RUN:
        _gate(problems, settings)
    problems.raise_any()
    return settings


def _fallback(spec: InputSpec) -> object:
    """A value of the right type for an input that failed (the run stops anyway)."""
    if spec.kind == "bool":
        return False
    if spec.kind == "int":
        return spec.minimum
    return spec.choices[0] if spec.kind == "choice" else ""


def _kebab_refused(spec: InputSpec) -> None:
    raise InputError(spec.name, f"is spelled `{spec.kebab}`, which action.yml does not "
                     f"declare: the runner also passes the default of `{spec.name}`, and "
                     "deploykit will not guess which one you meant.",
                     hint=f"Rename `{spec.kebab}` to `{spec.name}` in the step's `with:`.")


def _bounded(spec: InputSpec, value: str) -> None:
    if len(value) > spec.length_limit:
        raise InputError(spec.name, f"is {len(value)} characters long; at most "
                         f"{spec.length_limit}.", hint="Shorten it: no valid "
                         f"`{spec.name}` is that long.")


def _settle_within_timeout(settle: int, timeout: int, *, checked: bool) -> int:
    """A settle longer than the timeout could never pass: the containers would be
    replaced for a deploy that fails by construction."""
    if checked and settle > timeout:
        raise InputError("health_settle", f"is {settle} s, longer than `health_timeout` "
                         f"({timeout} s): no container could pass the health check.",
                         hint="Lower `health_settle` or raise `health_timeout`.")
    return settle


_UNKNOWN_ENVIRONMENT = "?"  # not an environment name: never production, never shown


def _gate(problems: _Problems, settings: Settings) -> None:
    """What ``settings.mode`` needs, and the production gate, with the other problems."""
    needs = MODE_REQUIRES[settings.mode]
    if "environment" in needs and not settings.environment:
        problems.check("environment", lambda: check_deploy_target(
            environment="", image_tag="", production_environments=()), None)
    if "environment" in problems.failed:  # the gate's verdict depends on the environment
        if settings.image_tag or "image_tag" in needs:
            problems.check("image_tag", lambda: _tag_alone(settings), None)
        return
    if settings.image_tag or "image_tag" in needs:
        problems.check("image_tag", lambda: check_deploy_target(
            environment=settings.environment, image_tag=settings.image_tag,
            production_environments=settings.production_environments), None)


def _tag_alone(settings: Settings) -> None:
    """The tag's own checks when the environment is unknown (never a policy verdict)."""
    with suppress(PolicyError):
        check_deploy_target(environment=_UNKNOWN_ENVIRONMENT, image_tag=settings.image_tag,
                            production_environments=())


def unused_inputs(env: Mapping[str, str], overrides: Mapping[str, str] | None,
                  mode: str) -> tuple[str, ...]:
    """Inputs set to something else than their default that ``mode`` never reads."""
    raw = {**read_inputs(env), **{k: v for k, v in (overrides or {}).items() if v}}
    return tuple(spec.name for spec in INPUTS if mode not in spec.modes
                 and spec.name in raw and raw[spec.name].strip() != spec.default.strip())


def _paths_inside_workspace(problems: _Problems, workspace: str, mode: str,
                            values: Mapping[str, object]) -> None:
    """In Actions, the workspace-relative paths of ``mode`` must stay inside the workspace.

    Lexical (this module does no I/O): ``..`` and absolute paths are what escape it. A
    symbolic link that leads out is caught where the path is used
    (:func:`deploykit.commands.deploy_run.check_local`).
    """
    root = posixpath.normpath(workspace or ".")
    workspace_relative = "relative to the workspace (GITHUB_WORKSPACE)"
    if mode in RUN:
        directory = problems.check("project_dir", lambda: _inside(
            root, root, "project_dir", str(values["project_dir"]) or ".",
            workspace_relative), "")
        if values["compose_file"] and directory:
            problems.check("compose_file", lambda: _inside(
                root, directory, "compose_file", str(values["compose_file"]),
                "relative to `project_dir`"), "")
    elif mode == BUILD:
        problems.check("context", lambda: _inside(
            root, root, "context", str(values["context"]) or ".", workspace_relative), "")
        if values["dockerfile"]:
            problems.check("dockerfile", lambda: _inside(
                root, root, "dockerfile", str(values["dockerfile"]), workspace_relative), "")


def _inside(root: str, base: str, name: str, value: str, relative_to: str) -> str:
    path = posixpath.normpath(posixpath.join(base, value))
    if not _within(path, root):
        raise InputError(name, f"{shown(value)} is outside the workspace {root}.",
                         hint=f"In Actions, `{name}` is {relative_to} and stays inside the "
                         "workspace: check the files out there.")
    return path


def _within(path: str, root: str) -> bool:
    if root == ".":  # a relative workspace: the current directory
        return not path.startswith("/") and path != ".." and not path.startswith("../")
    return path == root or path.startswith(root.rstrip("/") + "/")


def _github_context(env: Mapping[str, str]) -> GitHubContext:
    return GitHubContext(
        event_name=env.get("GITHUB_EVENT_NAME", ""),
        ref=env.get("GITHUB_REF", ""),
        sha=env.get("GITHUB_SHA", ""),
        repository=env.get("GITHUB_REPOSITORY", ""),
        actor=env.get("GITHUB_ACTOR", ""),
        run_id=env.get("GITHUB_RUN_ID", ""),
        run_attempt=env.get("GITHUB_RUN_ATTEMPT", ""),
        server_url=env.get("GITHUB_SERVER_URL", "") or "https://github.com",
        api_url=env.get("GITHUB_API_URL", "") or "https://api.github.com",
        workspace=env.get("GITHUB_WORKSPACE", "") or ".",
    )


# The mode words are defined in deploykit.inputs; most modules take them from here.
__all__ = ["BUILD", "DEPLOY", "ROLLBACK", "GitHubContext", "InvalidInputs", "Settings",
           "kebab_spellings", "load_settings", "read_inputs", "unused_inputs"]
