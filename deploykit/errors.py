"""The one error root of deploykit.

Every expected failure is a :class:`DeploykitError`: a short ``title`` for the
annotation, a ``message`` that says what happened, and a ``hint`` that says how
to fix it. Only ``deploykit.cli.main`` turns them into ``::error`` and exit 1.
"""

from __future__ import annotations

from deploykit.status import Status


class DeploykitError(Exception):
    """Root of every error deploykit reports to a user."""

    title = "deploykit failed"

    def __init__(self, message: str, *, hint: str = "", title: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if title:
            self.title = title

    def __str__(self) -> str:
        return f"{self.message}\nHint: {self.hint}" if self.hint else self.message


class InputError(DeploykitError):
    """An input (action input, CLI flag or environment variable) is invalid."""

    title = "Invalid input"

    def __init__(self, name: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"Input '{name}': {message}", hint=hint, title=f"Invalid input: {name}")
        self.input_name = name


class PolicyError(DeploykitError):
    """The production gate (or another policy) refused the request."""

    title = "Refused by policy"


class RegistryError(DeploykitError):
    """The container registry answered with an error."""

    title = "Registry error"


class ManifestUnknownError(RegistryError):
    """The tag or digest does not exist in the repository (and only that)."""

    title = "Image not found"


class RepositoryUnknownError(ManifestUnknownError):
    """The repository itself does not exist (no image was ever pushed to it)."""

    title = "Repository not found"


class UnauthorizedError(RegistryError):
    """The registry wants other credentials (401)."""

    title = "Registry authentication failed"


class LoginRequiredError(UnauthorizedError):
    """No credentials were given, and the registry wants some for this."""


class BadCredentialsError(UnauthorizedError):
    """The registry or its token service refused the username and password."""


class DeniedError(RegistryError):
    """Credentials were accepted, but they grant no right to the operation: a 403, a
    token without the scope asked for (``insufficient_scope``), ``DENIED``."""

    title = "Registry permission denied"


class InsecureRealmError(RegistryError):
    """The registry names a token service that would get the credentials over plain HTTP."""

    title = "Insecure token service"


class RegistryUnreachableError(RegistryError):
    """No answer from the registry: refused, unknown name, no route, TLS, or only
    server errors after retries."""

    title = "Registry unreachable"


class DockerError(DeploykitError):
    """The Docker engine or CLI failed."""

    title = "Docker error"


class BuildError(DeploykitError):
    """The image build failed."""

    title = "Build failed"


class WriteOnceTagError(BuildError):
    """A write-once tag already exists for another revision."""

    title = "Tag already published"


class ComposeError(DeploykitError):
    """The compose file is invalid for a pull-only deploy."""

    title = "Invalid compose project"


class LockError(DeploykitError):
    """Another deploy of the same project holds the lock."""

    title = "Deploy lock held"


class DeployError(DeploykitError):
    """The deploy failed (health, smoke test or digest check)."""

    title = "Deploy failed"

    def __init__(
        self, message: str, *, hint: str = "", title: str = "", status: str = Status.FAILED
    ) -> None:
        super().__init__(message, hint=hint, title=title)
        self.status = status


class OneShotError(DeployError):
    """A one-shot service (a migration) failed before the release replaced anything."""

    title = "One-shot service failed"


class GitHubError(DeploykitError):
    """The GitHub API refused or failed a request."""

    title = "GitHub API error"


class ProvenanceError(DeploykitError):
    """The build provenance of the image to deploy failed a check (``verify_provenance``)."""

    title = "Build provenance not verified"

    def __init__(self, check: str, message: str, *, hint: str = "") -> None:
        super().__init__(f"Provenance check '{check}' failed: {message}", hint=hint,
                         title=f"Build provenance not verified: {check}")
        self.check = check


def shown(value: str, limit: int = 80) -> str:
    """``repr`` of a value from outside for an error message, cut short: one bad input
    must not flood the log (a 5000-digit number, a 300-character name)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


class OutputFileError(DeploykitError):
    """A file the runner gave the step (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY) cannot be
    written: missing folder, a directory, no space left."""

    title = "Cannot write a step file"

    def __init__(self, variable: str, path: str, reason: str) -> None:
        super().__init__(
            f"Cannot write to {variable} ({path}): {reason}. Nothing half-written was left "
            "in it.",
            hint=f"{variable} must name a writable file on a file system with free space: "
            "the runner sets it for every step; outside a workflow, unset it or point it at "
            "such a file.", title=f"Cannot write {variable}")
        self.variable = variable
