"""What the GitHub recorder returns: a deployment, a release, a past deployment."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeploymentRecord:
    id: int
    environment: str
    ref: str
    digest: str
    url: str  # REST URL of the deployment
    html_url: str  # the environment's deployments page


@dataclass(frozen=True)
class ReleaseRecord:
    tag: str
    id: int
    url: str
    html_url: str
    created: bool
    previous_tag: str | None
    changelog: str


@dataclass(frozen=True)
class PreviousDeployment:
    id: int
    image: str
    tag: str
    digest: str
    state: str
