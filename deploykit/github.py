"""GitHub records: deployments (deploy, rollback) and releases (build).

This module needs no PyGithub: the glue for build.py and deploy.py is plain Python (the
records are :mod:`deploykit.github_records`, the release notes :mod:`deploykit.changelog`).
:meth:`GitHubRecorder.from_settings` imports the recorder itself
(:mod:`deploykit.github_api`, on PyGithub) only when there is a token to record with, so a
deploy without ``github_token`` never pays for PyGithub's imports (about 0.2 s).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from deploykit.actions import Actions, without_credentials
from deploykit.github_records import DeploymentRecord, ReleaseRecord
from deploykit.settings import Settings
from deploykit.tags import is_release_tag

if TYPE_CHECKING:
    from deploykit.github_api import PyGithubRecorder


# -- the recorder -----------------------------------------------------------------
class GitHubRecorder:
    """Deployments and releases of one repository; the recorder is
    :class:`deploykit.github_api.PyGithubRecorder`, made by :meth:`from_settings`."""

    @staticmethod
    def from_settings(
        settings: Settings,
        actions: Actions,
        *,
        sleep: Callable[[float], None] = time.sleep,
        new_request_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        pace_requests: bool = True,
    ) -> PyGithubRecorder | None:
        """None when there is nothing to record with: no token, no repository, or a dry run."""
        if not settings.github_token or not settings.github.repository or settings.dry_run:
            return None
        # Lazy on purpose: PyGithub costs about 0.2 s of imports, paid only with a token.
        from deploykit.github_api import PyGithubRecorder  # noqa: PLC0415

        return PyGithubRecorder.connect(settings, actions, sleep=sleep,
                                        new_request_id=new_request_id,
                                        pace_requests=pace_requests)


# -- glue for build.py and deploy.py --------------------------------------------------
def environment_url_for(settings: Settings) -> str:
    """The URL shown on the deployment: ``environment_url``, else the first ``smoke_url``
    without its credentials (``http://u:PW@host/`` -> ``http://host/``): they are for the
    smoke request only, never for a page anyone with read access sees."""
    if settings.environment_url:
        return settings.environment_url
    return without_credentials(settings.smoke_url[0]) if settings.smoke_url else ""


def deployment_ref(settings: Settings, image_tag: str, revision: str = "") -> str:
    """The git ref a deployment names: the image's source commit when known, else its
    ``vX.Y.Z`` tag (a git tag too), else the commit of this workflow run."""
    if revision:
        return revision
    if is_release_tag(image_tag):
        return image_tag
    return settings.github.sha or image_tag


def summary_links(
    *, deployment: DeploymentRecord | None = None, release: ReleaseRecord | None = None
) -> str:
    """Markdown lines linking the records for the job summary ("" when there are none)."""
    lines = []
    if deployment is not None:
        lines.append(f"- GitHub deployment: [#{deployment.id} to `{deployment.environment}`]"
                     f"({deployment.html_url})")
    if release is not None:
        lines.append(f"- GitHub release: [{release.tag}]({release.html_url})")
    return "\n".join(lines)


__all__ = ["DeploymentRecord", "GitHubRecorder", "ReleaseRecord", "deployment_ref",
           "environment_url_for", "summary_links"]
