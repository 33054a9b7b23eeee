"""Parsing and checking one input value (pure: no I/O, every problem an InputError)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import urlsplit

from deploykit.errors import InputError, shown
from deploykit.inputs import BOOL_VALUES, InputSpec
from deploykit.reference import registry_problem, repository_problem

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


def input_value(spec: InputSpec, value: str) -> object:
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
        return number(spec, value.strip())
    if spec.kind == "choice":
        text = value.strip()
        if text not in spec.choices:
            raise InputError(spec.name, f"must be one of {', '.join(spec.choices)}; "
                             f"got {shown(text)}.", hint=f"Use one of: {', '.join(spec.choices)}.")
        return text
    return value


def number(spec: InputSpec, text: str) -> int:
    hint = f"Write a number such as `{spec.name}: {spec.default}`."
    if not _DIGITS_RE.fullmatch(text):
        raise InputError(spec.name, f"must be a whole number (digits 0-9), got {shown(text)}.",
                         hint=hint)
    number = int(text) if len(text) <= _MAX_DIGITS else None
    if number is None or not spec.minimum <= number <= spec.maximum:
        raise InputError(spec.name, f"must be from {spec.minimum} to {spec.maximum}, got "
                         f"{shown(text)}.", hint=hint)
    return number


def lines(value: object) -> tuple[str, ...]:
    return tuple(line.strip() for line in str(value).splitlines() if line.strip())


def csv(value: str, *, lower: bool = False) -> tuple[str, ...]:
    items = (item.strip() for item in re.split(r"[,\n]", value))
    return tuple((item.lower() if lower else item) for item in items if item)


def registry(value: str) -> str:
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


def image_repo(value: str, *, required: bool = True, origin_read: bool = False) -> str:
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


def environment(value: str) -> str:
    """An environment name: it lands in the history, the lock, logs and summaries."""
    value = value.strip()
    if value and not _NAME_RE.fullmatch(value):
        raise InputError("environment", f"{shown(value)} is not an environment name.",
                         hint="Use 1 to 100 letters, digits, `.`, `_` or `-`, starting with a "
                         "letter or digit, e.g. `staging` or `production`.")
    return value


def production_environments(value: str) -> tuple[str, ...]:
    names = csv(value, lower=True)
    for name in names:
        if not _NAME_RE.fullmatch(name):
            raise InputError("production_environments", f"{shown(name)} is not an "
                             "environment name.", hint="Write names separated by commas, "
                             "e.g. `production,prod`.")
    return names


def project_name(value: str) -> str:
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


def http_url(name: str, value: str) -> str:
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


def public_url(name: str, value: str) -> str:
    """An :func:`http_url` that carries no credentials: one shown to anyone who can read
    the repository (the GitHub deployment's ``environment_url``)."""
    url = http_url(name, value)
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise InputError(name, "carries credentials (`user:password@`); it is shown on the "
                         "GitHub deployment to anyone who can read the repository.",
                         hint=f"Remove them from `{name}`. A smoke test that needs them "
                         "takes them in `smoke_url` (sent only as its Authorization "
                         "header).")
    return url


def platforms(value: str) -> tuple[str, ...]:
    platforms = csv(value)
    if not platforms:
        raise InputError("platforms", "is empty.", hint="e.g. `linux/amd64,linux/arm64`.")
    for platform in platforms:
        if not _PLATFORM_RE.match(platform):
            raise InputError("platforms", f"{shown(platform)} is not an os/arch[/variant].",
                             hint="e.g. `linux/amd64,linux/arm64,linux/arm/v7`.")
    return tuple(dict.fromkeys(platforms))


def key_values(name: str, lines: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for number, line in enumerate(lines, start=1):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InputError(name, f"line {number} is not KEY=VALUE.",
                             hint="Write one `KEY=VALUE` a line.")
        pairs.append((key.strip(), value))
    return tuple(pairs)


def build_secrets(lines: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
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


def build_date(env: Mapping[str, str]) -> datetime:
    epoch = env.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        return datetime.now(UTC)
    if not _DIGITS_RE.fullmatch(epoch) or len(epoch) > _MAX_DIGITS or int(epoch) > _EPOCH_MAX:
        raise InputError("SOURCE_DATE_EPOCH", f"must be Unix seconds (digits 0-9, at most "
                         f"{_EPOCH_MAX}), got {shown(epoch)}.",
                         hint="Unset it, or set it to e.g. `$(git log -1 --format=%ct)`.")
    return datetime.fromtimestamp(int(epoch), tz=UTC)


def provenance_repository(value: str) -> str:
    value = value.strip()
    if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9._-]{1,100}", value):
        raise InputError("provenance_repository", f"{shown(value)} is not a GitHub "
                         "repository.", hint="Write `<owner>/<repo>`, e.g. `octo-org/shop`.")
    return value
