"""Inputs, read once into one frozen :class:`Settings` object.

``INPUTS`` is the single table of every action input: ``action.yml``, the CLI
flags and the README's input table are all checked against it by tests. This
module does no I/O beyond reading the mapping it is given.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar
from urllib.parse import urlsplit

from deploykit.errors import DeploykitError, InputError, PolicyError, shown
from deploykit.policy import check_deploy_target
from deploykit.reference import registry_problem, repository_problem

BOOL_VALUES = ("true", "false")

BUILD, DEPLOY, ROLLBACK = "build", "deploy", "rollback"  # the modes; nowhere else
MODES = (BUILD, DEPLOY, ROLLBACK)
DAY_SECONDS = 86400  # upper bound of every timeout: a day is more than any deploy waits
KEEP_IMAGES_MAX = 20  # a bound; the engine's labels remember 20 releases below the current

RUN = (DEPLOY, ROLLBACK)


@dataclass(frozen=True)
class InputSpec:
    name: str
    description: str
    default: str = ""
    kind: str = "str"  # str | bool | int | choice | lines | secret
    choices: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    required: bool = False
    minimum: int = 0  # kind int: the accepted range
    maximum: int = 0
    cli_flag: str = ""  # the CLI flag when it differs from the input name
    max_length: int = 0  # characters; 0: the kind's (MAX_LENGTHS)

    @property
    def flag(self) -> str:
        return "--" + (self.cli_flag or self.name.replace("_", "-"))

    @property
    def length_limit(self) -> int:
        return self.max_length or MAX_LENGTHS.get(self.kind, MAX_LENGTHS["str"])

    @property
    def kebab(self) -> str:
        """The spelling action.yml does not declare: ``dry-run`` for ``dry_run``."""
        return self.name.replace("_", "-")


# Every value is bounded before it is parsed: a 100 kB value must never reach a regex or
# the log. Multi-line inputs (compose_env: a whole .env; a GitHub secret holds at most
# 48 kB) get the most, a path or a name (PATH_MAX is 4096) far less.
MAX_LENGTHS = {"lines": 65536, "secret": 65536, "str": 4096, "int": 4096, "bool": 4096,
               "choice": 4096}


INPUTS: tuple[InputSpec, ...] = (
    InputSpec("mode", "What to do: `build` (build and push), `deploy` (pull + up), "
              "`rollback` (deploy the previous image).", kind="choice", choices=MODES,
              required=True),
    InputSpec("registry", "Registry host and optional port, no scheme: `ghcr.io`, "
              "`127.0.0.1:5000`, `[::1]:5000`.", "ghcr.io"),
    InputSpec("image_repo", "Repository in the registry, `<org>/<app>`. "
              "Default: `GITHUB_REPOSITORY`, lower-cased; on a terminal without it, the "
              "`<owner>/<repo>` of the checkout's `origin` remote."),
    InputSpec("registry_username", "User for the registry login. Default: `GITHUB_ACTOR`."),
    InputSpec("registry_password", "Registry token, e.g. the `GHCR_PAT` secret "
              "(`write:packages` to build, `read:packages` to deploy).", kind="secret"),
    InputSpec("image_tag", "Tag (or `sha256:` digest, or `tag@sha256:...`) to deploy. "
              "Production takes only `vX.Y.Z` or a digest.", modes=RUN),
    InputSpec("environment", "Target environment, e.g. `staging` or `production` (letters, "
              "digits, `.`, `_`, `-`).", modes=RUN),
    InputSpec("production_environments", "Comma-separated environment names that count as "
              "production.", "production,prod", modes=RUN),
    InputSpec("version", "Release version `X.Y.Z` (with or without `v`) for builds from the "
              "`release` branch (CLI: `--release-version`).", modes=(BUILD,),
              cli_flag="release-version"),
    InputSpec("platforms", "Comma-separated platforms to build.", "linux/amd64,linux/arm64",
              modes=(BUILD,)),
    InputSpec("context", "Build context, relative to the workspace (in Actions: inside it).",
              ".", modes=(BUILD,)),
    InputSpec("dockerfile", "Dockerfile path, relative to the workspace (in Actions: inside "
              "it). Default: `Dockerfile` in the context.", modes=(BUILD,)),
    InputSpec("target", "Build stage to build (`--target`).", modes=(BUILD,)),
    InputSpec("build_args", "Build arguments, one `KEY=VALUE` a line.", kind="lines",
              modes=(BUILD,)),
    InputSpec("build_secrets", "Build secrets taken from the environment, one `id` or "
              "`id=ENV_VAR` a line (mounted with `RUN --mount=type=secret`, never build args).",
              kind="lines", modes=(BUILD,)),
    InputSpec("cache", "Build cache: `registry` (`<image>:buildcache`, mode=max), `gha`, or "
              "`none`.", "registry", kind="choice", choices=("registry", "gha", "none"),
              modes=(BUILD,)),
    InputSpec("provenance", "Attach a provenance attestation.", "false", kind="bool",
              modes=(BUILD,)),
    InputSpec("sbom", "Attach an SBOM attestation.", "false", kind="bool", modes=(BUILD,)),
    InputSpec("latest", "Add the `latest` co-tag on releases: `auto` (only for the highest "
              "non-pre-release version), `true`, `false`.", "auto", kind="choice",
              choices=("auto", "true", "false"), modes=(BUILD,)),
    InputSpec("skip_build_if_image_present", "When a write-once tag already exists (from "
              "another revision), skip the build and output its digest instead of failing.",
              "false", kind="bool", modes=(BUILD,)),
    InputSpec("force_redeploy", "Recreate the containers even when nothing changed.", "false",
              kind="bool", modes=RUN),
    InputSpec("dry_run", "Plan only: print what would happen, change nothing.", "false",
              kind="bool"),
    InputSpec("compose_file", "Compose file. Default: `compose.yaml`, then "
              "`docker-compose.yml`, in `project_dir` (in Actions: inside the workspace).",
              modes=RUN),
    InputSpec("project_dir", "Directory of the compose project, relative to the workspace "
              "(in Actions: inside it).", ".", modes=RUN),
    InputSpec("project_name", "Compose project name: lower-case letters, digits, `-` and `_`, "
              "starting with a letter or digit, at most 63 characters. Default: compose's own "
              "(the directory name).", modes=RUN),
    InputSpec("orchestrator", "`compose` (`docker compose pull` + `up` on one engine) or "
              "`swarm` (`docker stack deploy` to a Swarm manager, rolling updates; see "
              "docs/swarm.md).", "compose", kind="choice", choices=("compose", "swarm"),
              modes=RUN),
    InputSpec("compose_env", "Environment for the services, one `KEY=VALUE` a line (e.g. the "
              "`COMPOSE_ENV` secret). Masked: values of secret-like keys (`*PASSWORD*`, "
              "`*TOKEN*`, `*SECRET*`, `*KEY*`...), values of 12+ characters, URL credentials.",
              kind="secret", modes=RUN),
    InputSpec("health_timeout", "Seconds for every container to become healthy (1 to 86400).",
              "120", kind="int", modes=RUN, minimum=1, maximum=DAY_SECONDS),
    InputSpec("health_settle", "Seconds every container must run with no restart, from its "
              "own start, healthy if it has a healthcheck (0 to 3600).", "5", kind="int",
              modes=RUN, maximum=3600),
    InputSpec("smoke_url", "`http://` or `https://` URL(s) that must answer after the "
              "deploy, one a line.",
              kind="lines", modes=RUN),
    InputSpec("smoke_status", "HTTP status the smoke URLs must answer (100 to 599).", "200",
              kind="int", modes=RUN, minimum=100, maximum=599),
    InputSpec("smoke_contains", "Text the smoke responses must contain.", modes=RUN),
    InputSpec("smoke_timeout", "Seconds to keep retrying the smoke test (0 to 86400).", "60",
              kind="int", modes=RUN, maximum=DAY_SECONDS),
    InputSpec("rollback_on_failure", "Bring back the previous images when the deploy fails.",
              "true", kind="bool", modes=RUN),
    InputSpec("lock_timeout", "Seconds to wait for another deploy of the same project "
              "(0 to 86400).", "600", kind="int", modes=RUN, maximum=DAY_SECONDS),
    InputSpec("state_dir", "Directory of the deploy history. Default: "
              "`$DEPLOYKIT_STATE_DIR`, else `~/.local/state/deploykit`.", modes=RUN),
    InputSpec("github_token", "Token for GitHub deployments and releases (optional).",
              kind="secret"),
    InputSpec("github_records", "`best_effort`: a GitHub API failure is a warning; "
              "`required`: it fails the run.", "best_effort", kind="choice",
              choices=("best_effort", "required")),
    InputSpec("summary", "Write the job summary (`GITHUB_STEP_SUMMARY`; on a terminal, the "
              "summary printed to stderr).", "true", kind="bool"),
    InputSpec("environment_url", "`http(s)://` URL shown on the GitHub deployment. Default: "
              "the first `smoke_url`.", modes=RUN),
    InputSpec("verify_provenance", "Before any pull, verify the image's GitHub build "
              "provenance attestation (Sigstore): built by `provenance_repository`'s workflow "
              "from the tag `vX.Y.Z` (any tag for a digest). Recommended for production; "
              "see docs/provenance.md.", "false", kind="bool", modes=RUN),
    InputSpec("trusted_root", "File of Sigstore trusted roots, one JSON a line (`gh "
              "attestation trusted-root`), all tried. Default: the public-good root, "
              "updated over the network.", modes=RUN),
    InputSpec("provenance_repository", "Repository whose workflows must have built the "
              "image, `<owner>/<repo>`. Default: `GITHUB_REPOSITORY`.", modes=RUN),
    InputSpec("keep_images", "After a verified deploy, remove this repository's images "
              "that no container uses, but those of the N most recent releases (the "
              "running one included: a rollback pulls nothing); `0` keeps every image "
              "(0 to 20).", "5", kind="int", modes=(DEPLOY,), maximum=KEEP_IMAGES_MAX),
)

OUTPUTS: dict[str, str] = {
    "digest": "Index digest of the image built or deployed (`sha256:...`).",
    "image": "Pinned image reference, `registry/repo@sha256:...`.",
    "tags": "Tags published, bare names (one a line): `v1.4.2`.",
    "images": "The same tags as full references (one a line): `ghcr.io/org/app:v1.4.2`.",
    "metadata": "JSON (build): `image`, `digest` (the index), `tags` (each `{tag, "
                "reference}`), `platforms` (platform -> manifest digest), `labels` (the image "
                "config's), `status`.",
    "version": "Release version (`vX.Y.Z`) when there is one.",
    "platforms": "JSON object: platform -> manifest digest.",
    "status": "`built`, `skipped`, `validated`, `deployed`, `rolled_back`, `failed` or "
              "`planned`.",
    "previous_image": "Image that ran before the deploy (the rollback target).",
    "duration_seconds": "Wall time of the run in seconds.",
}

SPECS = {spec.name: spec for spec in INPUTS}

_DIGITS_RE = re.compile(r"[0-9]+")  # fullmatch; str.isdigit() also takes "\u0661\u0662"
_MAX_DIGITS = 12  # longer numbers are out of every range: never int() a megabyte of digits
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # environment names (fullmatch)
# compose-go's projectNameRegex; the length bound is deploykit's (a DNS label's 63).
_PROJECT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
PROJECT_NAME_MAX = 63
_EPOCH_MAX = 253402300799  # 9999-12-31T23:59:59Z, the last second datetime can hold
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PLATFORM_RE = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IMAGE_VARIABLES = ("IMAGE_REGISTRY", "IMAGE_REPO", "IMAGE_TAG")
# compose_env is also the environment of the docker CLI that runs compose: these would
# steer the CLI itself (DOCKER_HOST, DOCKER_CONFIG, COMPOSE_FILE, COMPOSE_PROJECT_NAME...).
COMPOSE_OWN_PREFIXES = ("DOCKER_", "COMPOSE_")


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
        spec.name, partial(_parse, spec, raw.get(spec.name, spec.default)), _fallback(spec))
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
        registry=problems.check("registry", lambda: _registry(text("registry")), ""),
        image_repo=problems.check("image_repo", lambda: _image_repo(
            text("image_repo") or github.repository.lower(),
            required=image_required, origin_read=origin_read), ""),
        registry_username=text("registry_username") or github.actor,
        registry_password=text("registry_password"),
        image_tag=text("image_tag").strip(),
        environment=problems.check("environment", lambda: _environment(text("environment")),
                                   ""),
        production_environments=problems.check(
            "production_environments",
            lambda: _production_environments(text("production_environments")), ()),
        version=text("version").strip(),
        platforms=problems.check("platforms", lambda: _platforms(text("platforms")), ()),
        context=text("context"),
        dockerfile=text("dockerfile"),
        target=text("target"),
        build_args=problems.check(
            "build_args", lambda: _key_values("build_args", _lines(values["build_args"])), ()),
        build_secrets=problems.check(
            "build_secrets", lambda: _build_secrets(_lines(values["build_secrets"])), ()),
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
                                    lambda: _project_name(text("project_name")), ""),
        compose_env=problems.check("compose_env",
                                   lambda: parse_compose_env(text("compose_env")), ()),
        health_timeout=number("health_timeout"),
        health_settle=problems.check("health_settle", lambda: _settle_within_timeout(
            number("health_settle"), number("health_timeout"),
            checked="health_timeout" not in problems.failed), 0),
        smoke_url=problems.check("smoke_url", lambda: tuple(
            _http_url("smoke_url", url) for url in _lines(values["smoke_url"])), ()),
        smoke_status=number("smoke_status"),
        smoke_contains=text("smoke_contains"),
        smoke_timeout=number("smoke_timeout"),
        rollback_on_failure=bool(values["rollback_on_failure"]),
        lock_timeout=number("lock_timeout"),
        state_dir=text("state_dir") or env.get("DEPLOYKIT_STATE_DIR", ""),
        github_token=text("github_token"),
        github_records=text("github_records"),
        summary=bool(values["summary"]),
        environment_url=problems.check("environment_url", lambda: _http_url(
            "environment_url", text("environment_url").strip())
            if text("environment_url").strip() else "", ""),
        github=github,
        build_date=problems.check("SOURCE_DATE_EPOCH", lambda: _build_date(env),
                                  datetime.now(UTC)),
        orchestrator=text("orchestrator"),
        verify_provenance=bool(values["verify_provenance"]),
        trusted_root=text("trusted_root").strip(),
        provenance_repository=problems.check("provenance_repository", lambda: (
            _provenance_repository(text("provenance_repository"))), ""),
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


def _parse(spec: InputSpec, value: str) -> object:
    if spec.required and not value.strip():
        raise InputError(spec.name, "is required.",
                         hint=f"Set `{spec.name}` to one of: {', '.join(spec.choices)}.")
    if spec.kind == "bool":
        text = value.strip()
        if text not in BOOL_VALUES:
            raise InputError(spec.name, f"must be `true` or `false`, got {shown(text)}.",
                             hint=f"Write `{spec.name}: true` or `{spec.name}: false`.")
        return text == "true"
    if spec.kind == "int":
        return _number(spec, value.strip())
    if spec.kind == "choice":
        text = value.strip()
        if text not in spec.choices:
            raise InputError(spec.name, f"must be one of {', '.join(spec.choices)}; "
                             f"got {shown(text)}.", hint=f"Use one of: {', '.join(spec.choices)}.")
        return text
    return value


def _number(spec: InputSpec, text: str) -> int:
    hint = f"Write a number such as `{spec.name}: {spec.default}`."
    if not _DIGITS_RE.fullmatch(text):
        raise InputError(spec.name, f"must be a whole number (digits 0-9), got {shown(text)}.",
                         hint=hint)
    number = int(text) if len(text) <= _MAX_DIGITS else None
    if number is None or not spec.minimum <= number <= spec.maximum:
        raise InputError(spec.name, f"must be from {spec.minimum} to {spec.maximum}, got "
                         f"{shown(text)}.", hint=hint)
    return number


def _lines(value: object) -> tuple[str, ...]:
    return tuple(line.strip() for line in str(value).splitlines() if line.strip())


def _csv(value: str, *, lower: bool = False) -> tuple[str, ...]:
    items = (item.strip() for item in re.split(r"[,\n]", value))
    return tuple((item.lower() if lower else item) for item in items if item)


def _registry(value: str) -> str:
    value = value.strip().lower()
    scheme = _SCHEME_RE.match(value)
    if scheme:
        host = value[scheme.end():].rstrip("/")
        raise InputError("registry", f"drop the scheme: use {host or 'ghcr.io'}, not "
                         f"{shown(value)}.", hint="`registry` is a host and optional port; "
                         "deploykit picks HTTPS (plain HTTP only on loopback, as dockerd does).")
    why = registry_problem(value)
    if why:
        raise InputError("registry", f"{shown(value)} is not a registry host: {why}.",
                         hint="Write a host and optional port, no path: e.g. `ghcr.io`, "
                         "`127.0.0.1:5000` or `[::1]:5000`.")
    return value


def _image_repo(value: str, *, required: bool = True, origin_read: bool = False) -> str:
    value = value.strip()
    if not value and not required:
        return value
    if not value and origin_read:  # a terminal: the checkout's origin was asked too
        raise InputError("image_repo", "is not set (no `image_repo`, no GITHUB_REPOSITORY) "
                         "and this directory is no git checkout whose `origin` remote names "
                         "an `<owner>/<repo>`.", hint="Set `image_repo: <org>/<app>`, or run "
                         "in a clone of the repository (`git remote -v` shows its origin).")
    if not value:
        raise InputError("image_repo", "is empty and GITHUB_REPOSITORY is not set.",
                         hint="Set `image_repo: <org>/<app>`.")
    why = repository_problem(value)
    if why:
        raise InputError("image_repo", f"{shown(value)} is not a valid repository name: "
                         f"{why}.", hint="Write `<org>/<app>` in lower case, e.g. "
                         f"`{shown(value.lower())[1:-1]}`; no tag, no registry.")
    return value


def _environment(value: str) -> str:
    """An environment name: it lands in the history, the lock, logs and summaries."""
    value = value.strip()
    if value and not _NAME_RE.fullmatch(value):
        raise InputError("environment", f"{shown(value)} is not an environment name.",
                         hint="Use 1 to 100 letters, digits, `.`, `_` or `-`, starting with a "
                         "letter or digit, e.g. `staging` or `production`.")
    return value


def _production_environments(value: str) -> tuple[str, ...]:
    names = _csv(value, lower=True)
    for name in names:
        if not _NAME_RE.fullmatch(name):
            raise InputError("production_environments", f"{shown(name)} is not an "
                             "environment name.", hint="Write names separated by commas, "
                             "e.g. `production,prod`.")
    return names


def _project_name(value: str) -> str:
    """Compose's rule for project names, plus a length bound, before anything exists."""
    value = value.strip()
    if not value:
        return value
    if not _PROJECT_NAME_RE.fullmatch(value):
        raise InputError("project_name", f"{shown(value)} is not a compose project name.",
                         hint="Use lower-case letters, digits, `-` and `_`, starting with a "
                         "letter or digit (compose's rule), e.g. `shop-staging`.")
    if len(value) > PROJECT_NAME_MAX:
        raise InputError("project_name", f"is {len(value)} characters long; at most "
                         f"{PROJECT_NAME_MAX}.", hint="Use a shorter name: it prefixes every "
                         "container, network and volume of the project.")
    return value


def _http_url(name: str, value: str) -> str:
    """An ``http(s)://host...`` URL; anything else is refused before anything changes."""
    try:
        parts = urlsplit(value)
        scheme, hostname = parts.scheme, parts.hostname
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        scheme, hostname = "", None
    if scheme not in ("http", "https") or not hostname or any(
            ord(char) < 33 or ord(char) == 127 for char in value):
        raise InputError(name, f"{shown(value)} is not an http:// or https:// URL with a "
                         "host.", hint=f"Write e.g. `{name}: https://shop.example.com/health`.")
    return value


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


def _platforms(value: str) -> tuple[str, ...]:
    platforms = _csv(value)
    if not platforms:
        raise InputError("platforms", "is empty.", hint="e.g. `linux/amd64,linux/arm64`.")
    for platform in platforms:
        if not _PLATFORM_RE.match(platform):
            raise InputError("platforms", f"{shown(platform)} is not an os/arch[/variant].",
                             hint="e.g. `linux/amd64,linux/arm64,linux/arm/v7`.")
    return tuple(dict.fromkeys(platforms))


def _key_values(name: str, lines: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for number, line in enumerate(lines, start=1):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InputError(name, f"line {number} is not KEY=VALUE.",
                             hint="Write one `KEY=VALUE` a line.")
        pairs.append((key.strip(), value))
    return tuple(pairs)


def _build_secrets(lines: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for number, line in enumerate(lines, start=1):
        secret_id, _, env_name = line.partition("=")
        secret_id, env_name = secret_id.strip(), (env_name.strip() or secret_id.strip())
        if not _ENV_KEY_RE.match(env_name) or not re.match(r"^[A-Za-z0-9_.-]+$", secret_id):
            raise InputError("build_secrets", f"line {number} is not `id` or `id=ENV_VAR`.",
                             hint="Name the environment variable that holds the secret, "
                             "never the value itself.")
        pairs.append((secret_id, env_name))
    return tuple(pairs)


def parse_compose_env(text: str) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` lines (``#`` comments, blank lines and ``export`` allowed).

    Errors name the line number only: the value is a secret.
    """
    pairs = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not _ENV_KEY_RE.match(key):
            raise InputError("compose_env", f"line {number} is not KEY=VALUE.",
                             hint="Write one `KEY=VALUE` a line; keys are letters, digits "
                             "and `_`.")
        if key in IMAGE_VARIABLES:
            raise InputError("compose_env", f"line {number} sets {key}, which deploykit "
                             "controls.", hint="Pass the image through `registry`, "
                             "`image_repo` and `image_tag` instead.")
        if key.startswith(COMPOSE_OWN_PREFIXES):
            raise InputError("compose_env", f"line {number} sets {key}, which would change "
                             "how docker compose itself runs (compose_env is its environment "
                             "too), not only the services.", hint=f"For a service, use another "
                             f"name (e.g. APP_{key}) and map it in the compose file "
                             f"(`{key}: ${{APP_{key}}}`); for compose itself, set {key} in the "
                             "step's `env:`.")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs.append((key, value))
    return tuple(pairs)


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


def _build_date(env: Mapping[str, str]) -> datetime:
    epoch = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        return datetime.now(UTC)
    if not _DIGITS_RE.fullmatch(epoch) or len(epoch) > _MAX_DIGITS or int(epoch) > _EPOCH_MAX:
        raise InputError("SOURCE_DATE_EPOCH", f"must be Unix seconds (digits 0-9, at most "
                         f"{_EPOCH_MAX}), got {shown(epoch)}.",
                         hint="Unset it, or set it to e.g. `$(git log -1 --format=%ct)`.")
    return datetime.fromtimestamp(int(epoch), tz=UTC)


def _provenance_repository(value: str) -> str:
    value = value.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]{1,100}", value):
        raise InputError("provenance_repository", f"{shown(value)} is not a GitHub "
                         "repository.", hint="Write `<owner>/<repo>`, e.g. `octo-org/shop`.")
    return value


# -- naming an input for the context: `image_repo:` in a workflow, --image-repo on a terminal
_INPUT_NAMES = "|".join(sorted(SPECS, key=len, reverse=True))
# `name` or `name: value` in backticks (messages and hints write inputs the workflow way)
_QUOTED_INPUT_RE = re.compile(rf"`({_INPUT_NAMES})(?:: ([^`\n]*))?`")
_INPUT_LEAD_RE = re.compile(rf"\bInput '({_INPUT_NAMES})'")
_TITLE_RE = re.compile(r"^(Invalid inputs?: )(.*)$")
_VALUE_NAMES = frozenset({"latest"})  # bare `latest` in a text is the tag, not the input


def terminal_name(name: str, flags: frozenset[str]) -> str:
    """How a terminal user sets input ``name``: its flag when the command has it, else
    its ``INPUT_*`` variable (secrets, inputs of other commands)."""
    if name == "mode":
        return "the command"
    spec = SPECS.get(name)
    if spec is None:
        return name
    return spec.flag if name in flags else f"INPUT_{name.upper()}"


def for_terminal(text: str, flags: frozenset[str]) -> str:
    """``text`` (a message, hint or title written for a workflow) with every input named
    the way a terminal sets it: `image_repo: <org>/<app>` becomes `--image-repo <org>/<app>`
    and `registry_password` becomes `INPUT_REGISTRY_PASSWORD`."""
    def quoted(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if value is None:
            if name in _VALUE_NAMES:
                return match.group(0)
            return f"`{terminal_name(name, flags)}`"
        if name == "mode":
            return f"`deploykit {value}`"
        if name not in flags:
            return f"`INPUT_{name.upper()}={value}`"
        return f"`{SPECS[name].flag} {value}`"

    text = _QUOTED_INPUT_RE.sub(quoted, text)
    text = _INPUT_LEAD_RE.sub(lambda m: terminal_name(m.group(1), flags), text)
    title = _TITLE_RE.match(text)
    if title:
        names = ", ".join(terminal_name(name.strip(), flags) for name in title.group(2)
                          .split(","))
        text = title.group(1) + names
    return text
