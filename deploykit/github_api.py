"""The GitHub recorder itself, on PyGithub: imported only when there is a token.

:meth:`deploykit.github.GitHubRecorder.from_settings` loads this module (and with it
PyGithub, about 0.2 s of imports) only when ``github_token`` and the repository are set
and the run is not a dry run; everything else of :mod:`deploykit.github` (records, glue,
changelog, release notes) needs no PyGithub.

Recording is best effort unless ``github_records: required``: a refused or failed
request becomes ONE warning that names the permission the job lacks, and a build
or deploy that itself succeeded stays green. With ``required`` the same text is a
:class:`GitHubError`.

Retries: PyGithub's own urllib3 retry is switched off; tenacity retries here, and
only calls that are safe to repeat: reads, updates, statuses (a repeated status
changes nothing), and creations that first look for what a lost answer may
already have created (``_create_once``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any, TypeVar
from urllib.parse import quote

import requests
import tenacity
from github import Auth, Github, GithubException, UnknownObjectException
from github.Deployment import Deployment
from github.GithubException import BadAttributeException
from github.GitRelease import GitRelease

from deploykit import __version__
from deploykit import github_failures as failures
from deploykit.actions import Actions
from deploykit.changelog import previous_release_tag, release_body, release_tag, render_changelog
from deploykit.errors import GitHubError
from deploykit.github_records import DeploymentRecord, PreviousDeployment, ReleaseRecord
from deploykit.reference import is_digest
from deploykit.settings import Settings
from deploykit.tags import is_release_tag

T = TypeVar("T")

DEPLOYMENTS_WRITE = "deployments: write"
DEPLOYMENTS_READ = "deployments: read"
CONTENTS_WRITE = "contents: write"
CONTENTS_READ = "contents: read"

DEPLOYMENTS_SCANNED = 30
MAX_CHANGELOG_COMMITS = 1000
STATUS_DESCRIPTION_LIMIT = 140  # GitHub rejects longer deployment status descriptions
SUCCESSFUL_STATES = ("success", "inactive")



class _Refused(Exception):
    """A record that cannot be made for a reason found here, not in an HTTP answer."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


# -- the recorder -----------------------------------------------------------------
class PyGithubRecorder:
    """Deployments and releases of one repository, reported through ``actions``."""

    def __init__(
        self,
        client: Github,
        settings: Settings,
        actions: Actions,
        *,
        sleep: Callable[[float], None] = time.sleep,
        new_request_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._client = client
        self._settings = settings
        self._actions = actions
        self._sleep = sleep
        self._new_request_id = new_request_id
        self._repo = client.get_repo(settings.github.repository)

    @classmethod
    def connect(
        cls,
        settings: Settings,
        actions: Actions,
        *,
        sleep: Callable[[float], None] = time.sleep,
        new_request_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        pace_requests: bool = True,
    ) -> PyGithubRecorder:
        """The recorder for ``settings`` (token and repository set: see ``from_settings``)."""
        actions.mask(settings.github_token)
        client = Github(
            auth=Auth.Token(settings.github_token),
            base_url=settings.github.api_url.rstrip("/"),
            user_agent=f"deploykit/{__version__}",
            retry=None,
            lazy=True,  # no GET of the repository itself before the first real call
            # GitHub asks integrations to space out writes (secondary rate limits).
            seconds_between_requests=0.25 if pace_requests else None,
            seconds_between_writes=1.0 if pace_requests else None,
        )
        return cls(client, settings, actions, sleep=sleep, new_request_id=new_request_id)

    # -- deployments -----------------------------------------------------------------
    def start_deployment(
        self, *, environment: str, ref: str, image: str, tag: str, digest: str,
        is_production: bool, description: str,
    ) -> DeploymentRecord | None:
        """Create the deployment (payload: image, tag, digest) and mark it ``in_progress``."""
        return self._record(
            f"create the GitHub deployment of `{environment}`", DEPLOYMENTS_WRITE,
            lambda: self._start_deployment(
                environment=environment, ref=ref, image=image, tag=tag, digest=digest,
                is_production=is_production, description=description),
        )

    def finish_deployment(
        self, record: DeploymentRecord | None, *, success: bool, environment_url: str,
        description: str,
    ) -> None:
        """Post ``success`` or ``failure``; after a success, earlier successes become inactive."""
        if record is None:
            return
        state = "success" if success else "failure"
        self._record(
            f"set GitHub deployment #{record.id} of `{record.environment}` to {state}",
            DEPLOYMENTS_WRITE,
            lambda: self._finish_deployment(record, state, environment_url, description),
        )

    def previous_successful_deployment(
        self, environment: str, exclude_digest: str = ""
    ) -> PreviousDeployment | None:
        """Newest deployment of ``environment`` that succeeded, from its deploykit payload."""
        return self._record(
            f"read the GitHub deployments of `{environment}`", DEPLOYMENTS_READ,
            lambda: self._retrying(lambda: self._previous_success(environment, exclude_digest)),
        )

    def previous_successful_digest(self, environment: str, exclude_digest: str = "") -> str | None:
        previous = self.previous_successful_deployment(environment, exclude_digest)
        return previous.digest if previous else None

    # -- releases --------------------------------------------------------------------
    def publish_release(
        self, *, version: str, sha: str, digest: str, image: str, platforms: Mapping[str, str],
        prerelease: bool, create_tag: bool,
    ) -> ReleaseRecord | None:
        """Make sure tag ``vX.Y.Z`` is on ``sha``, then create or update its release."""
        tag = release_tag(version)
        return self._record(
            f"publish the GitHub release {tag}", CONTENTS_WRITE,
            lambda: self._publish_release(
                tag=tag, sha=sha, digest=digest, image=image, platforms=platforms,
                prerelease=prerelease, create_tag=create_tag),
        )

    def release_for(self, image_tag: str) -> ReleaseRecord | None:
        """The GitHub release of a deployed ``vX.Y.Z`` (for the deploy summary), or None."""
        if not is_release_tag(image_tag):
            return None
        release = self._record(f"read the GitHub release {image_tag}", CONTENTS_READ,
                               lambda: self._find_release(image_tag))
        if release is None:
            return None
        return ReleaseRecord(tag=image_tag, id=release.id, url=release.url,
                             html_url=release.html_url, created=False, previous_tag=None,
                             changelog="")

    # -- deployments, inside --------------------------------------------------------------
    def _start_deployment(
        self, *, environment: str, ref: str, image: str, tag: str, digest: str,
        is_production: bool, description: str,
    ) -> DeploymentRecord:
        request_id = self._new_request_id()
        payload = {"image": image, "tag": tag, "digest": digest,
                   "run_url": self._settings.github.run_url, "request_id": request_id}
        deployment = self._create_once(
            lambda: self._repo.create_deployment(
                ref=ref, auto_merge=False, required_contexts=[], payload=payload,
                environment=environment, description=description,
                transient_environment=not is_production, production_environment=is_production,
            ),
            lambda: self._find_deployment(environment, request_id),
        )
        record = DeploymentRecord(
            id=deployment.id, environment=environment, ref=ref, digest=digest,
            url=deployment.url, html_url=self._environment_page(environment),
        )
        self._post_status(record.url, "in_progress", description)
        return record

    def _finish_deployment(
        self, record: DeploymentRecord, state: str, environment_url: str, description: str
    ) -> None:
        self._post_status(record.url, state, description, environment_url=environment_url)
        if state == "success":
            # auto_inactive skips production and transient environments: every one of ours.
            self._inactivate_earlier(record)

    def _find_deployment(self, environment: str, request_id: str) -> Deployment | None:
        for deployment in islice(self._repo.get_deployments(environment=environment),
                                 DEPLOYMENTS_SCANNED):
            if _payload(deployment).get("request_id") == request_id:
                return deployment
        return None

    def _post_status(
        self, deployment_url: str, state: str, description: str, *, environment_url: str = ""
    ) -> None:
        # PyGithub's create_status has no log_url: post through its requester.
        body: dict[str, Any] = {"state": state, "description": _short(description)}
        if self._settings.github.run_url:
            body["log_url"] = self._settings.github.run_url
        if environment_url:
            body["environment_url"] = environment_url
        self._retrying(lambda: self._client.requester.requestJsonAndCheck(
            "POST", f"{deployment_url}/statuses", input=body))

    def _inactivate_earlier(self, record: DeploymentRecord) -> None:
        deployments = self._retrying(lambda: list(islice(
            self._repo.get_deployments(environment=record.environment), DEPLOYMENTS_SCANNED)))
        for deployment in deployments:
            if deployment.id >= record.id:
                continue
            state = self._latest_state(deployment)
            if state == "inactive":
                break  # the success that made it inactive handled everything older
            if state == "success":
                self._post_status(deployment.url, "inactive",
                                  f"Superseded by deployment #{record.id}.")

    def _latest_state(self, deployment: Deployment) -> str:
        latest = self._retrying(lambda: next(iter(deployment.get_statuses()), None))
        return latest.state if latest else ""

    def _previous_success(self, environment: str, exclude_digest: str) -> PreviousDeployment | None:
        for deployment in islice(self._repo.get_deployments(environment=environment),
                                 DEPLOYMENTS_SCANNED):
            payload = _payload(deployment)
            digest = str(payload.get("digest", ""))
            if not is_digest(digest) or digest == exclude_digest:
                continue
            state = self._latest_state(deployment)
            if state in SUCCESSFUL_STATES:
                return PreviousDeployment(
                    id=deployment.id, image=str(payload.get("image", "")),
                    tag=str(payload.get("tag", "")), digest=digest, state=state,
                )
        return None

    def _environment_page(self, environment: str) -> str:
        github = self._settings.github
        return f"{github.server_url}/{github.repository}/deployments/{quote(environment, safe='')}"

    # -- releases, inside --------------------------------------------------------------------
    def _publish_release(
        self, *, tag: str, sha: str, digest: str, image: str, platforms: Mapping[str, str],
        prerelease: bool, create_tag: bool,
    ) -> ReleaseRecord:
        self._ensure_tag(tag, sha, f"{tag}\n\nImage: {image}@{digest}\n", create=create_tag)
        previous = previous_release_tag(self._release_tags(), tag)
        changelog = render_changelog(self._commit_messages(previous, sha)) if previous else ""
        body = release_body(
            tag=tag, changelog=changelog, image=image, digest=digest, platforms=platforms,
            prerelease=prerelease, previous_tag=previous,
            compare_url=self._compare_page(previous, tag) if previous else "",
        )
        release, created = self._upsert_release(tag, body, prerelease)
        return ReleaseRecord(
            tag=tag, id=release.id, url=release.url, html_url=release.html_url, created=created,
            previous_tag=previous, changelog=changelog,
        )

    def _ensure_tag(self, tag: str, sha: str, message: str, *, create: bool) -> None:
        target = self._tag_target(tag)
        if target is None and not create:
            raise _Refused(f"the git tag {tag} does not exist",
                           f"Push the annotated tag (`git tag -a {tag} {sha[:12]}`), or build "
                           "from the `release` branch with `version`, which creates it.")
        if target is None:
            # A repeated tag object is an unreferenced blob git collects: safe to retry.
            tag_object = self._retrying(lambda: self._repo.create_git_tag(
                tag=tag, message=message, object=sha, type="commit"))
            if self._create_tag_ref(tag, tag_object.sha):
                return
            target = self._tag_target(tag)
        if target != sha:
            raise _Refused(
                f"the git tag {tag} points to {str(target)[:12]}, not to {sha[:12]}",
                "Versions are write-once: release this commit under a new `version`, or "
                "delete the wrong tag first if it was a mistake.",
            )

    def _create_tag_ref(self, tag: str, tag_sha: str) -> bool:
        """True when this run created the ref; False when it already existed."""
        def create() -> bool:
            try:
                self._repo.create_git_ref(ref=f"refs/tags/{tag}", sha=tag_sha)
            except GithubException as exc:
                if exc.status != 422:  # 422: "Reference already exists"
                    raise
                return False
            return True

        return self._create_once(create, lambda: False if self._tag_target(tag) else None)

    def _tag_target(self, tag: str) -> str | None:
        """The commit the tag points to (through an annotated tag object), or None."""
        try:
            kind, object_sha = self._retrying(lambda: _ref_object(self._repo.get_git_ref(
                f"tags/{tag}")))
        except UnknownObjectException:
            return None
        if kind == "tag":
            return self._retrying(lambda: self._repo.get_git_tag(object_sha).object.sha)
        return object_sha

    def _release_tags(self) -> list[str]:
        return self._retrying(lambda: [tag.name for tag in self._repo.get_tags()])

    def _commit_messages(self, previous: str, sha: str) -> list[str]:
        """Oldest first, as the compare API lists them."""
        commits = self._retrying(lambda: list(islice(
            self._repo.compare(previous, sha).commits, MAX_CHANGELOG_COMMITS)))
        return [commit.commit.message for commit in commits]

    def _upsert_release(self, tag: str, body: str, prerelease: bool) -> tuple[GitRelease, bool]:
        # "legacy": GitHub picks the latest by date and version, so a hotfix of an older
        # line never becomes "latest".
        make_latest = "false" if prerelease else "legacy"
        existing = self._find_release(tag)
        if existing is not None:
            updated = self._retrying(lambda: existing.update_release(
                name=tag, message=body, draft=False, prerelease=prerelease,
                make_latest=make_latest))
            return updated, False
        created = self._create_once(
            lambda: self._repo.create_git_release(
                tag=tag, name=tag, message=body, draft=False, prerelease=prerelease,
                make_latest=make_latest),
            lambda: self._find_release(tag),
        )
        return created, True

    def _find_release(self, tag: str) -> GitRelease | None:
        try:
            return self._retrying(lambda: self._repo.get_release(tag))
        except UnknownObjectException:
            return None

    def _compare_page(self, previous: str, tag: str) -> str:
        github = self._settings.github
        return f"{github.server_url}/{github.repository}/compare/{previous}...{tag}"

    # -- failures and retries ------------------------------------------------------------
    def _record(self, what: str, permission: str, call: Callable[[], T]) -> T | None:
        try:
            return call()
        except _Refused as exc:
            self._failed(f"Could not {what}: {exc.reason}.", exc.hint, exc)
        except (GithubException, requests.RequestException) as exc:
            message = f"Could not {what}: {failures.reason(exc).rstrip('.')}."
            self._failed(message, failures.hint(exc, permission, self._settings), exc)
        return None

    def _failed(self, message: str, hint: str, cause: Exception) -> None:
        if self._settings.github_records == "required":
            raise GitHubError(message, hint=hint) from cause
        self._actions.warning(f"{message} {hint}", title="GitHub record skipped")

    def _retrying(self, call: Callable[[], T]) -> T:
        retryer = tenacity.Retrying(
            retry=tenacity.retry_if_exception(failures.is_transient),
            wait=failures.wait_seconds,
            stop=failures.should_stop,
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        return retryer(call)

    def _create_once(self, create: Callable[[], T], find: Callable[[], T | None]) -> T:
        """A POST whose 5xx may hide a success: look for its result before posting again."""
        attempts = 0

        def attempt() -> T:
            nonlocal attempts
            attempts += 1
            found = find() if attempts > 1 else None
            return found if found is not None else create()

        return self._retrying(attempt)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = failures.outcome_exception(state)
        self._actions.info(
            f"GitHub API: {failures.reason(exc) if exc else 'failed'}; retrying in "
            f"{failures.wait_seconds(state):g} s (attempt {state.attempt_number + 1} of "
            f"{failures.ATTEMPTS})."
        )


# -- helpers ----------------------------------------------------------------------------
def _short(description: str) -> str:
    if len(description) <= STATUS_DESCRIPTION_LIMIT:
        return description
    return description[: STATUS_DESCRIPTION_LIMIT - 1] + "…"


def _payload(deployment: Deployment) -> dict[str, Any]:
    try:
        payload = deployment.payload
    except BadAttributeException:  # a payload someone posted as a plain string
        return {}
    return payload if isinstance(payload, dict) else {}


def _ref_object(ref: Any) -> tuple[str, str]:
    return str(ref.object.type), str(ref.object.sha)
