"""What runs on the engine: the SDK client, the action container, the project's
containers and the digest each one runs, and what an interrupted ``up`` left.

Only the low-level ``client.api`` calls are used (``containers``, ``inspect_container``,
``inspect_image``): plain dicts, easy to fake. ``docker_client`` honours ``DOCKER_HOST``
(``unix://``, ``tcp://`` and ``ssh://user@host`` through the system ``ssh`` client) like
the docker CLI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.docker_sdk import docker, enable_ssh
from deploykit.errors import DockerError

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONEOFF_LABEL = "com.docker.compose.oneoff"
_CONTAINER_DIR_RE = re.compile(r"containers/([0-9a-f]{64})/")
_CONTAINER_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


def docker_client(env: Mapping[str, str]) -> Any:
    """An SDK client for the engine the docker CLI would talk to."""
    host = env.get("DOCKER_HOST", "")
    if host.startswith("ssh://"):
        enable_ssh()
    try:
        return docker.DockerClient.from_env(environment=dict(env),
                                            use_ssh_client=host.startswith("ssh://"))
    except docker.errors.DockerException as exc:
        raise DockerError(f"Cannot reach the Docker engine ({host or 'default socket'}): {exc}",
                          hint="Start the engine, or point DOCKER_HOST at it (e.g. "
                          "`ssh://deploy@host`).") from exc


# -- the container we run in (the action container) ----------------------------
def own_container_candidates(proc: Path = Path("/proc/self"), hostname: str = "",
                             dockerenv: Path = Path("/.dockerenv")) -> list[str]:
    """IDs of the container this process may run in; empty on a plain host.

    Docker bind-mounts ``/etc/hostname`` (and hosts, resolv.conf) from
    ``.../containers/<id>/``; on a host, mountinfo also lists *other*
    containers' mounts, so only those three mount points count.
    """
    found: list[str] = []
    try:
        mountinfo = (proc / "mountinfo").read_text(encoding="utf-8")
    except OSError:
        mountinfo = ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in _CONTAINER_FILES:
            match = _CONTAINER_DIR_RE.search(fields[3])
            if match and match.group(1) not in found:
                found.append(match.group(1))
    if dockerenv.exists() and re.fullmatch(r"[0-9a-f]{12}", hostname):
        found.append(hostname)
    return found


def own_container(api: Any, candidates: Iterable[str]) -> dict[str, Any] | None:
    """The inspect data of the container we run in, when it is on this engine."""
    for candidate in candidates:
        try:
            return dict(api.inspect_container(candidate))
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError:
            return None
    return None


def workspace_mounts(container: Mapping[str, Any] | None, workspace: str) -> dict[str, str]:
    """Bind mounts of our container (destination -> host source) when the workspace is one
    of them; empty when we do not run in a container of this engine with that mount.

    A workspace on a named volume (act, runners in containers) counts too: then volume
    mounts map as well, their ``Source`` being the volume's directory on the engine's host.
    """
    if not container or not workspace:
        return {}
    mounts = container.get("Mounts") or []
    workspace = workspace.rstrip("/") or "/"
    kinds = {str(m.get("Destination")): m.get("Type") for m in mounts}
    accepted = ("bind", "volume") if kinds.get(workspace) == "volume" else ("bind",)
    binds = {str(m.get("Destination")): str(m.get("Source"))
             for m in mounts if m.get("Type") in accepted}
    return binds if workspace in binds else {}


# -- what runs now -----------------------------------------------------------
@dataclass(frozen=True)
class RunningService:
    service: str
    container_id: str
    reference: str  # Config.Image, e.g. registry/repo:tag@sha256:...
    digest: str  # registry digest of the running image ('' when unknown)


def project_containers(api: Any, project: str) -> list[dict[str, Any]]:
    """Inspect data of every container of the project (stopped ones too), by service."""
    try:
        summaries = api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
        inspected = []
        for summary in summaries:
            try:
                inspected.append(dict(api.inspect_container(summary["Id"])))
            except docker.errors.NotFound:
                continue  # removed while we looked (a recreate)
    except docker.errors.APIError as exc:
        raise DockerError(f"Cannot list the containers of project {project!r}: "
                          f"{exc.explanation}") from exc
    labels = [(c.get("Config") or {}).get("Labels") or {} for c in inspected]
    return sorted((c for c, lab in zip(inspected, labels, strict=True)
                   if lab.get(ONEOFF_LABEL) != "True"),
                  key=lambda c: (service_of(c), str(c.get("Name"))))


def service_of(container: Mapping[str, Any]) -> str:
    labels = (container.get("Config") or {}).get("Labels") or {}
    return str(labels.get(SERVICE_LABEL) or container.get("Name", "")).lstrip("/")


def image_digests(api: Any, image_id: str, image_name: str) -> list[str]:
    """Registry digests of a local image for ``image_name`` (``registry/repo``)."""
    try:
        image = api.inspect_image(image_id)
    except docker.errors.NotFound:
        return []
    digests = []
    for repo_digest in image.get("RepoDigests") or []:
        name, _, digest = str(repo_digest).partition("@")
        if name == image_name and digest not in digests:
            digests.append(digest)
    return digests


# compose names the container it creates to replace another `<12 hex of the old ID>_<name>`
# until the old one is removed, then renames it.
_TEMPORARY_NAME = re.compile(r"^/?[0-9a-f]{12}_")


def leftover_containers(api: Any, project: str,
                        services: Iterable[str]) -> list[dict[str, Any]]:
    """Containers of ``services`` an interrupted ``up`` left (a cancel or a kill in the
    middle of a recreate): compose's temporary replacements, and containers created but
    never started. They make the next ``up`` fail ("container name already in use")."""
    wanted = set(services)
    found = []
    for container in api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
        labels = container.get("Labels") or {}
        if labels.get(SERVICE_LABEL) not in wanted or labels.get(ONEOFF_LABEL) == "True":
            continue
        names = container.get("Names") or []
        if container.get("State") == "created" or any(_TEMPORARY_NAME.match(str(name))
                                                      for name in names):
            found.append(container)
    return found


def remove_leftovers(api: Any, project: str, services: Iterable[str]) -> list[str]:
    """Remove :func:`leftover_containers` (by ID, forced): the names of those removed."""
    removed = []
    try:
        for container in leftover_containers(api, project, services):
            with suppress(docker.errors.NotFound):
                api.remove_container(container["Id"], force=True)
            removed.append(str((container.get("Names") or [container["Id"]])[0]).lstrip("/"))
    except docker.errors.APIError as exc:
        raise DockerError(f"Cannot remove the containers an interrupted `docker compose up` "
                          f"left in project {project!r}: {exc.explanation}") from exc
    return removed


def image_present(api: Any, reference: str) -> bool:
    """Whether the engine has ``reference`` (``registry/repo@sha256:...``) locally; an
    engine that cannot say is taken as "no" (the pull then asks the registry)."""
    try:
        api.inspect_image(reference)
    except docker.errors.APIError:
        return False
    return True


def running_digest(api: Any, container: Mapping[str, Any], image_name: str,
                   known_by_image: dict[str, list[str]] | None = None) -> str:
    """The digest ``container`` runs; ``known_by_image`` keeps each image's digests for
    the next container of the same image (an app and its worker: one inspect)."""
    reference = str((container.get("Config") or {}).get("Image") or "")
    image_id = str(container.get("Image") or "")
    cache = {} if known_by_image is None else known_by_image
    if image_id not in cache:
        cache[image_id] = image_digests(api, image_id, image_name)
    known = cache[image_id]
    pinned = reference.partition("@")[2]
    ours = reference.startswith((image_name + ":", image_name + "@"))
    if pinned and (pinned in known or (ours and not known)):
        return pinned
    return known[0] if known else ""


def running_services(api: Any, project: str, image_name: str,
                     services: Iterable[str]) -> list[RunningService]:
    """The image of each container of ``services`` (the rollback target)."""
    wanted = set(services)
    known_by_image: dict[str, list[str]] = {}
    return [RunningService(service_of(c), str(c["Id"]),
                           str((c.get("Config") or {}).get("Image") or ""),
                           running_digest(api, c, image_name, known_by_image))
            for c in project_containers(api, project) if service_of(c) in wanted]


__all__ = ["ONEOFF_LABEL", "PROJECT_LABEL", "SERVICE_LABEL", "RunningService", "docker_client",
           "image_digests", "image_present", "leftover_containers", "own_container",
           "own_container_candidates", "project_containers", "remove_leftovers",
           "running_digest", "running_services", "service_of", "workspace_mounts"]
