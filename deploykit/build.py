"""Build & Push (``deploykit build``, ``mode: build``): build once, push, verify.

Flow: plan the tags from the registry; refuse to move a write-once tag (or
skip an idempotent re-run); log in into a throwaway DOCKER_CONFIG; build every
platform with buildx and push every tag at once; resolve each tag again from
the registry and insist they all name the pushed index, which must hold every
requested platform. Validation builds (feature branches, pull requests) build
without pushing anything.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deploykit.actions import Actions, markdown_table
from deploykit.buildx import BuildRequest, BuildResult, run_build, select_builder
from deploykit.dockercli import DockerCLI
from deploykit.errors import BuildError, InputError, WriteOnceTagError
from deploykit.github import GitHubRecorder, summary_links
from deploykit.plan import BuildPlan, PlannedTag, format_plan, make_plan, plan_command
from deploykit.registry import RegistryClient
from deploykit.settings import Settings
from deploykit.tags import RELEASE, parse_version

BUILT, SKIPPED, VALIDATED = "built", "skipped", "validated"
OCI = "org.opencontainers.image"
CACHE_TAG = "buildcache"


@dataclass(frozen=True)
class Outcome:
    """What the run did, for outputs and the summary."""

    status: str
    digest: str = ""
    tags: tuple[str, ...] = ()
    platforms: Mapping[str, str] | None = None
    cache: str = ""  # "N of M steps cached"
    note: str = ""
    release_version: str = ""  # "vX.Y.Z" when a release was built
    image: str = ""


def run(settings: Settings, actions: Actions, args: argparse.Namespace) -> None:
    """Handler of ``deploykit build`` and ``mode: build``."""
    if settings.dry_run:
        plan_command(settings, actions, args)
        return
    actions.mask(settings.registry_password)
    client = RegistryClient(settings.registry, settings.image_repo,
                            settings.registry_username, settings.registry_password)
    docker = DockerCLI(actions, getattr(args, "env", None))
    outcome = execute(settings, actions, client, docker)
    if outcome.status == BUILT:
        publish_release(settings, actions, outcome)


def execute(
    settings: Settings, actions: Actions, client: RegistryClient, docker: DockerCLI
) -> Outcome:
    """Plan, guard, build, push and verify; then outputs and the summary."""
    started = time.monotonic()
    with actions.group(f"Tag plan for {settings.image_name}"):
        plan = make_plan(settings, client)
        actions.info(format_plan(plan))
    existing = write_once_guard(plan, settings.github.sha, settings.skip_build_if_image_present)
    if existing is not None:
        outcome = skip(plan, existing, settings.github.sha, client, actions)
    else:
        outcome = build(settings, plan, client, docker)
    report(actions, settings, plan, outcome, time.monotonic() - started)
    return outcome


# -- the write-once guard ----------------------------------------------------------
def write_once_guard(plan: BuildPlan, sha: str, skip_if_present: bool) -> PlannedTag | None:
    """The published write-once tag to reuse instead of building, or None to build.

    Raises WriteOnceTagError when one was published from another revision.
    """
    published = [entry for entry in plan.existing if entry.write_once]
    if not published:
        return None
    foreign = [entry for entry in published if entry.revision != sha]
    if foreign and not skip_if_present:
        raise _write_once_error(plan, foreign[0], sha)
    return (foreign or published)[0]


def _write_once_error(plan: BuildPlan, entry: PlannedTag, sha: str) -> WriteOnceTagError:
    revision = entry.revision or "unknown (no org.opencontainers.image.revision label)"
    return WriteOnceTagError(
        f"Tag {plan.image}:{entry.tag} is already published at {entry.digest} from "
        f"revision {revision}; this build is revision {sha or 'unknown'}. "
        "A build never moves a write-once tag.",
        hint="Release a new version (a new `vX.Y.Z` tag or `version` input) instead of "
        "rebuilding this one, or set `skip_build_if_image_present: true` to keep the "
        "published image and output its digest.")


def skip(
    plan: BuildPlan, existing: PlannedTag, sha: str, client: RegistryClient, actions: Actions
) -> Outcome:
    digest = existing.digest or ""
    same = existing.revision == sha
    why = ("an idempotent re-run of the same revision" if same else
           f"published from revision {existing.revision or 'unknown'}; "
           "skip_build_if_image_present is true")
    actions.notice(f"{plan.image}:{existing.tag} is already published at {digest} ({why}): "
                   "nothing is built or pushed.", title="Build skipped")
    tags = tuple(entry.tag for entry in plan.existing if entry.digest == digest)
    return Outcome(SKIPPED, digest, tags, client.platforms(digest),
                   note=f"Skipped: {existing.tag} already published ({why}).")


# -- build, push, verify ------------------------------------------------------------
def build(
    settings: Settings, plan: BuildPlan, client: RegistryClient, docker: DockerCLI
) -> Outcome:
    push = plan.tag_plan.push
    context, dockerfile = build_paths(settings)
    with docker.logged_in(settings.registry, settings.registry_username,
                          settings.registry_password):
        builder = select_builder(docker, settings.platforms,
                                 exports_cache=push and settings.cache != "none")
        request = BuildRequest(
            context=context, dockerfile=dockerfile, platforms=settings.platforms,
            tags=tuple(f"{plan.image}:{tag}" for tag in plan.tags), push=push,
            labels=oci_labels(settings, plan), build_args=settings.build_args,
            secrets=settings.build_secrets, target=settings.target,
            provenance=settings.provenance, sbom=settings.sbom, cache=settings.cache,
            cache_ref=f"{plan.image}:{CACHE_TAG}", builder=builder)
        verb = "Build and push" if push else "Validation build (no push) of"
        with docker.actions.group(f"{verb} {plan.image} for {', '.join(settings.platforms)}"):
            result = run_build(docker, request)
    cache = cache_text(result)
    if not push:
        return Outcome(VALIDATED, cache=cache, note=plan.tag_plan.reason)
    platforms = verify(client, plan, result, settings.platforms)
    release_version = plan.tag_plan.version if plan.tag_plan.kind == RELEASE else ""
    return Outcome(BUILT, result.digest, plan.tags, platforms, cache=cache,
                   release_version=release_version, image=plan.image)


def build_paths(settings: Settings) -> tuple[str, str]:
    """Context and Dockerfile, relative ones resolved against the workspace."""
    workspace = Path(settings.github.workspace)
    context = workspace / settings.context
    if not context.is_dir():
        raise InputError("context", f"{context} is not a directory.",
                         hint="Set `context` relative to the repository root, e.g. `.` or "
                         "`app`, and check out the repository first (actions/checkout).")
    dockerfile = workspace / settings.dockerfile if settings.dockerfile else \
        context / "Dockerfile"
    if not dockerfile.is_file():
        raise InputError("dockerfile", f"{dockerfile} does not exist.",
                         hint="Set `dockerfile` relative to the repository root, e.g. "
                         "`docker/Dockerfile`.")
    return str(context), str(dockerfile)


def oci_labels(settings: Settings, plan: BuildPlan) -> tuple[tuple[str, str], ...]:
    github = settings.github
    version = plan.tag_plan.version or next(iter(plan.tag_plan.write_once), "")
    labels = [
        ("source", f"{github.server_url}/{github.repository}" if github.repository else ""),
        ("revision", github.sha),
        ("version", version),
        ("created", settings.build_date.strftime("%Y-%m-%dT%H:%M:%SZ")),
        ("title", settings.image_repo.rsplit("/", 1)[-1]),
    ]
    return tuple((f"{OCI}.{key}", value) for key, value in labels if value)


def cache_text(result: BuildResult) -> str:
    return f"{result.cached_steps} of {result.total_steps} steps cached"


def verify(
    client: RegistryClient, plan: BuildPlan, result: BuildResult, wanted: tuple[str, ...]
) -> dict[str, str]:
    """Every tag names the pushed index, and the index holds every platform."""
    if not result.digest:
        raise BuildError("buildx pushed, but reported no image digest in its metadata file.",
                         hint="Update docker buildx (0.10 or later).")
    moved = [(tag, actual) for tag in plan.tags
             if (actual := client.resolve(tag)) != result.digest]
    if moved:
        listing = "; ".join(f"{plan.image}:{tag} -> {actual}" for tag, actual in moved)
        raise BuildError(
            f"After the push, not every tag points to the pushed index {result.digest}: "
            f"{listing}.", title="Pushed digest not verified",
            hint="Another build pushed the same tags at the same time, or the registry "
            "did not store the push. Check the registry and run the build again.")
    platforms = client.platforms(result.digest)
    if missing := [p for p in wanted if p not in platforms]:
        raise BuildError(
            f"The pushed index {result.digest} has no manifest for {', '.join(missing)} "
            f"(it holds {', '.join(sorted(platforms)) or 'nothing'}).",
            title="Pushed digest not verified",
            hint="The builder dropped a platform: check `platforms` and the builder "
            "(`docker buildx inspect`).")
    return platforms


# -- GitHub release ------------------------------------------------------------------
def publish_release(settings: Settings, actions: Actions, outcome: Outcome) -> None:
    """Tag and release ``vX.Y.Z`` on GitHub when a release was built and a token given."""
    if not outcome.release_version:
        return
    recorder = GitHubRecorder.from_settings(settings, actions)
    if recorder is None:
        return
    version = parse_version(outcome.release_version)
    release = recorder.publish_release(
        version=outcome.release_version, sha=settings.github.sha, digest=outcome.digest,
        image=outcome.image, platforms=dict(outcome.platforms or {}),
        prerelease=bool(version and version.prerelease),
        create_tag=not settings.github.ref.startswith("refs/tags/"))
    if release is not None:
        actions.add_summary(summary_links(release=release))


# -- outputs and summary --------------------------------------------------------------
def report(
    actions: Actions, settings: Settings, plan: BuildPlan, outcome: Outcome, seconds: float
) -> None:
    pinned = f"{plan.image}@{outcome.digest}" if outcome.digest else ""
    actions.set_output("digest", outcome.digest)
    actions.set_output("image", pinned)
    actions.set_output("tags", "\n".join(outcome.tags))
    actions.set_output("version", plan.tag_plan.version)
    actions.set_output("platforms", platforms_json(outcome.platforms or {}))
    actions.set_output("status", outcome.status)
    actions.info(f"Build {outcome.status}: {pinned or plan.image}")
    actions.add_summary(summary(plan, outcome, settings.platforms, seconds))


def platforms_json(platforms: Mapping[str, str]) -> str:
    return json.dumps(dict(platforms), sort_keys=True, separators=(",", ":"))


def summary(
    plan: BuildPlan, outcome: Outcome, platforms: tuple[str, ...], seconds: float
) -> str:
    parts = [f"### Build & Push `{plan.image}`: {outcome.status}", ""]
    if outcome.note:
        parts += [outcome.note, ""]
    if outcome.tags:
        rows = [[f"`{tag}`", f"`{outcome.digest}`"] for tag in outcome.tags]
        parts += [markdown_table(["Tag", "Digest"], rows), ""]
    else:
        parts += ["Nothing was pushed.", ""]
    shown = sorted(outcome.platforms) if outcome.platforms else list(platforms)
    parts.append(f"- Platforms: {', '.join(shown)}")
    parts.append(f"- Cache: {outcome.cache or 'not built'}")
    parts.append(f"- Duration: {seconds:.1f} s")
    return "\n".join(parts)
