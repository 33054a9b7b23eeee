"""The production gate: which image tag may be deployed where.

Pure: it runs before anything touches the Docker engine or the registry, so a
refused deploy makes no connection at all.

- Production takes only ``vX.Y.Z`` (no pre-release), a digest ``sha256:<64 hex>``,
  or ``vX.Y.Z@sha256:<64 hex>``.
- Other environments take any valid tag or digest except ``latest``, which the
  ADR keeps as a co-tag that no environment consumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from deploykit.errors import InputError, PolicyError, shown
from deploykit.reference import DIGEST_RE as _DIGEST_RE
from deploykit.reference import TAG_RE as _TAG_RE
from deploykit.tags import LATEST, STAGING_LATEST, is_release_tag, parse_version

_PRODUCTION_HINT = ("Pass a release tag such as `image_tag: v1.4.2`, or a digest "
                    "(`sha256:...` or `v1.4.2@sha256:...`; `deploykit resolve "
                    "REGISTRY/REPO:v1.4.2` prints it).")


@dataclass(frozen=True)
class DeployTarget:
    """What the gate let through: a tag, a digest, or both (``tag@digest``)."""

    tag: str | None
    digest: str | None
    is_production: bool

    @property
    def reference(self) -> str:
        """What to pull: the digest when given (it pins harder than a tag)."""
        return self.digest or self.tag or ""

    def __str__(self) -> str:
        if self.tag and self.digest:
            return f"{self.tag}@{self.digest}"
        return self.reference


def check_deploy_target(
    *, environment: str, image_tag: str, production_environments: tuple[str, ...]
) -> DeployTarget:
    """Let ``image_tag`` through to ``environment``, or raise a PolicyError saying why."""
    name, production = _environment(environment, production_environments)
    tag, digest = _split(image_tag.strip(), name, production)
    return _let_through(tag, digest, name, production)


def check_release(*, environment: str, tag: str | None, digest: str,
                  production_environments: tuple[str, ...]) -> DeployTarget:
    """The gate for a release known as a value (a rollback's target, read from the engine,
    the history or GitHub): its parts are checked as they are, never joined and parsed."""
    name, production = _environment(environment, production_environments)
    if not _DIGEST_RE.fullmatch(digest):
        raise InputError("image_tag", f"{shown(digest)} is not a digest.",
                         hint="A digest is `sha256:` and 64 lower-case hex digits.")
    if tag is not None and not _TAG_RE.match(tag):
        raise InputError("image_tag", f"{shown(tag)} is not an image tag.",
                         hint="Pass the release to go back to: `image_tag: vX.Y.Z`.")
    return _let_through(tag, digest, name, production)


def _environment(environment: str, production_environments: tuple[str, ...]) -> tuple[str, bool]:
    name = environment.strip()
    if not name:
        raise InputError("environment", "is empty: deploykit must know where it deploys.",
                         hint="Set `environment: staging` or `environment: production`.")
    return name, name.lower() in {env.strip().lower() for env in production_environments}


def _let_through(tag: str | None, digest: str | None, name: str,
                 production: bool) -> DeployTarget:
    if production:
        _check_production(tag, digest, name)
    elif tag == LATEST:
        raise PolicyError(
            f"Refusing to deploy `latest` to {name}: `latest` is only a co-tag of releases "
            "and no environment consumes it.",
            hint="Deploy `staging-latest` or an exact `test-YYYYMMDD-N` to staging, and a "
            "`vX.Y.Z` to production.")
    return DeployTarget(tag, digest, production)


def _split(image_tag: str, environment: str, production: bool) -> tuple[str | None, str | None]:
    """``tag``, ``sha256:...`` or ``tag@sha256:...`` into (tag, digest)."""
    if not image_tag:
        if production:
            raise PolicyError(f"No image tag given for production environment {environment}.",
                              hint=_PRODUCTION_HINT)
        raise InputError("image_tag", "is empty.",
                         hint="Set `image_tag`, e.g. `staging-latest` or `test-20260101-1`.")
    tag, at, digest = image_tag.partition("@")
    if _DIGEST_RE.match(image_tag):
        return None, image_tag
    if at and not _DIGEST_RE.match(digest):
        raise InputError("image_tag", f"{shown(digest)} after `@` is not a digest.",
                         hint="A digest is `sha256:` and 64 lower-case hex digits.")
    if not _TAG_RE.match(tag):
        raise InputError("image_tag", f"{shown(image_tag)} is not an image tag.",
                         hint="Pass only the tag (e.g. `v1.4.2`), not REGISTRY/REPO:TAG: "
                         "`registry` and `image_repo` name the image.")
    return tag, digest or None


def _check_production(tag: str | None, digest: str | None, environment: str) -> None:
    if tag is None:  # a bare digest: the strictest pin there is
        return
    why = _production_refusal(tag)
    if why:
        shown = f"{tag}@{digest}" if digest else tag
        raise PolicyError(f"Refusing to deploy `{shown}` to production environment "
                          f"{environment}: {why}", hint=_PRODUCTION_HINT)


# Tags production refuses by name, and why (exact name or prefix).
_REFUSED_NAMES = {
    LATEST: "`latest` moves with every release and is never deployed to production.",
    STAGING_LATEST: "`staging-latest` is the moving staging alias.",
}
_REFUSED_PREFIXES = {
    "test-": "`test-*` tags are staging builds.",
    "sha-": "`sha-*` tags are builds of a commit, not releases.",
}


def _production_refusal(tag: str) -> str:
    """Why ``tag`` may not go to production; empty when it may."""
    if tag in _REFUSED_NAMES:
        return _REFUSED_NAMES[tag]
    for prefix, why in _REFUSED_PREFIXES.items():
        if tag.startswith(prefix):
            return why
    version = parse_version(tag)
    if version is None:
        return "production takes only a release `vX.Y.Z` or a digest."
    if not is_release_tag(tag):
        return f"release tags start with `v` (`v{tag}`)."
    if version.prerelease:
        return f"{tag} is a pre-release."
    return ""
