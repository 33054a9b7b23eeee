"""Build & Push (``deploykit build``, ``mode: build``): build once, push, verify.

Flow: plan the tags from the registry; refuse to move a write-once tag, skip
an idempotent re-run, or complete the tags of an earlier run of the same revision
that stopped part-way; log in into a throwaway DOCKER_CONFIG; build every platform
with buildx into a local OCI layout; upload it by digest (no tag); publish the
tags one by one (``publish.py``); check the index holds every requested platform.
Validation builds (feature branches, pull requests) build without pushing anything.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from deploykit.actions import Actions, markdown_table
from deploykit.buildx import (
    BuilderProbe,
    BuildRequest,
    BuildResult,
    run_build,
    select_builder,
)
from deploykit.cancel import CancelGuard, Cancelled
from deploykit.dockercli import DockerCLI
from deploykit.errors import BuildError, DeploykitError, InputError, WriteOnceTagError
from deploykit.plan import BuildPlan, PlannedTag, format_plan, make_plan, plan_command
from deploykit.publish import PartlyPublishedError, Publisher, upload_layout
from deploykit.registry import OCI_INDEX, RegistryClient, registry_client
from deploykit.settings import Settings
from deploykit.status import Status
from deploykit.tags import RELEASE, is_test_tag, number_of_test_tag, parse_version

BUILT, SKIPPED, VALIDATED = Status.BUILT, Status.SKIPPED, Status.VALIDATED
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
    labels: Mapping[str, str] | None = None  # the image config's, read back from the registry


def run(settings: Settings, actions: Actions, env: Mapping[str, str]) -> None:
    """``deploykit build`` and ``mode: build``; ``env``: the environment of its children.

    SIGINT and SIGTERM (a cancelled workflow) stop the run where it is: the child running
    (buildx, in its own session, which the signal does not reach) is stopped with it."""
    guard = CancelGuard()
    try:
        with guard.installed(), guard.interruptible():
            _run(settings, actions, env)
    except Cancelled as cancelled:
        raise BuildError(f"Cancelled ({cancelled.signal_name}): the build was stopped, with "
                         "its docker children; a tag already published stays.",
                         hint="`deploykit tags` shows what the registry has now; run the "
                         "build again to finish it.", title="Build cancelled") from None


def _run(settings: Settings, actions: Actions, env: Mapping[str, str]) -> None:
    if settings.dry_run:
        plan_command(settings, actions)
        return
    actions.mask(settings.registry_password)
    docker = DockerCLI(actions, env)
    # The probe first: making the registry client loads requests (~0.1 s) meanwhile.
    with docker.temporary_config(), builder_probe(settings, docker) as probe:
        client = registry_client(settings, actions)
        outcome = execute(settings, actions, client, docker, probe)
    if outcome.status == BUILT:
        publish_release(settings, actions, outcome)


def execute(
    settings: Settings, actions: Actions, client: RegistryClient, docker: DockerCLI,
    probe: BuilderProbe | None = None,
) -> Outcome:
    """Plan, guard, build, push and verify; then outputs and the summary.

    Runs in one throwaway DOCKER_CONFIG, so that the builder probe, the login and the
    build all see the same builders and contexts; ``probe`` was started in it (else
    one is started here).
    """
    if probe is None:
        with docker.temporary_config(), builder_probe(settings, docker) as own:
            return execute(settings, actions, client, docker, own)
    started = time.monotonic()
    with actions.group(f"Tag plan for {settings.image_name}"):
        plan = make_plan(settings, client)
        actions.info(format_plan(plan))
    existing = write_once_guard(plan, settings.github.sha, settings.skip_build_if_image_present)
    try:
        if existing is None:
            outcome = build(settings, plan, client, docker, probe)
        elif existing.revision == settings.github.sha:
            outcome = complete(settings, plan, existing, client, actions)
        else:
            outcome = skip(plan, existing, settings.github.sha, client, actions)
    except PartlyPublishedError as exc:
        actions.add_summary(partial_summary(plan, exc))
        raise
    outcome = replace(outcome, labels=image_labels(settings, plan, outcome, client, actions))
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
    plan: BuildPlan, existing: PlannedTag, sha: str, client: RegistryClient, actions: Actions,
    *, tags: tuple[str, ...] | None = None,
) -> Outcome:
    digest = existing.digest or ""
    same = existing.revision == sha
    why = ("an idempotent re-run of the same revision" if same else
           f"published from revision {existing.revision or 'unknown'}; "
           "skip_build_if_image_present is true")
    actions.notice(f"{plan.image}:{existing.tag} is already published at {digest} ({why}): "
                   "nothing is built or pushed.", title="Build skipped")
    if tags is None:
        tags = tuple(entry.tag for entry in plan.existing if entry.digest == digest)
    return Outcome(SKIPPED, digest, tags, client.platforms(digest),
                   note=f"Skipped: {existing.tag} already published ({why}).")


def complete(
    settings: Settings, plan: BuildPlan, existing: PlannedTag, client: RegistryClient,
    actions: Actions,
) -> Outcome:
    """A re-run of a revision already pushed: publish whatever tag is missing, else skip."""
    digest = existing.digest or ""
    publisher = new_publisher(settings, client, actions, digest)
    test_tag = own_test_tag(plan, publisher)
    tags = publisher.publish(tuple(test_tag if is_test_tag(t) and test_tag else t
                                   for t in plan.tags))
    if not publisher.published:
        return skip(plan, existing, settings.github.sha, client, actions, tags=tuple(tags))
    actions.notice(f"{plan.image}@{digest} (this revision) was already pushed by an earlier "
                   f"run that stopped part-way; published the missing tags: "
                   f"{', '.join(publisher.published)}.", title="Build completed")
    note = (f"Completed: an earlier run of this revision pushed {digest}; this run published "
            f"{', '.join(publisher.published)}. Nothing was built.")
    return Outcome(BUILT, digest, tuple(tags), client.platforms(digest),
                   note=" ".join([note, *publisher.notes]),
                   release_version=release_version(plan), image=plan.image)


def own_test_tag(plan: BuildPlan, publisher: Publisher) -> str:
    """A ``test-YYYYMMDD-N`` already naming the image (of the plan's date or the image's)."""
    planned = next((t for t in plan.tags if is_test_tag(t)), "")
    if not planned or planned in {entry.tag for entry in plan.existing}:
        return planned
    created = publisher.created
    dates = {planned.split("-")[1], f"{created:%Y%m%d}" if created else ""}
    candidates = sorted((t for t in plan.registry_tags
                         if is_test_tag(t) and t.split("-")[1] in dates),
                        key=number_of_test_tag, reverse=True)
    return next((t for t in candidates if publisher.holder(t) == publisher.digest), planned)


def new_publisher(
    settings: Settings, client: RegistryClient, actions: Actions, digest: str
) -> Publisher:
    given = settings.github.ref.removeprefix("refs/tags/")
    renumber = not (settings.github.ref.startswith("refs/tags/") and is_test_tag(given))
    return Publisher(client, actions, digest, renumber=renumber, latest=settings.latest)


def release_version(plan: BuildPlan) -> str:
    return plan.tag_plan.version if plan.tag_plan.kind == RELEASE else ""


# -- build, push, publish, verify -------------------------------------------------------
def builder_probe(settings: Settings, docker: DockerCLI) -> BuilderProbe:
    """The builder's read-only questions, asked while the plan is read (see BuilderProbe).

    ``docker info`` is asked too when the build may need the image store: several
    platforms, or a cache it would export.
    """
    return BuilderProbe(docker, store=len(settings.platforms) > 1 or settings.cache != "none")


def build(
    settings: Settings, plan: BuildPlan, client: RegistryClient, docker: DockerCLI,
    probe: BuilderProbe | None = None,
) -> Outcome:
    """Build (and push); inside the run's temporary DOCKER_CONFIG (see execute)."""
    push = plan.tag_plan.push
    context, dockerfile = build_paths(settings)
    actions = docker.actions
    cache_there = cache_exists(settings, plan, client, actions)  # while the probe runs
    with tempfile.TemporaryDirectory(prefix="deploykit-oci-") as layout:
        if settings.registry_password:
            actions.mask(settings.registry_password)
            docker.login(settings.registry, settings.registry_username,
                         settings.registry_password)
        builder = select_builder(docker, settings.platforms, probe=probe,
                                 exports_cache=push and settings.cache != "none")
        request = BuildRequest(
            context=context, dockerfile=dockerfile, platforms=settings.platforms,
            push=push, labels=oci_labels(settings, plan),
            build_args=settings.build_args, secrets=settings.build_secrets,
            target=settings.target, provenance=settings.provenance, sbom=settings.sbom,
            cache=settings.cache, cache_ref=f"{plan.image}:{CACHE_TAG}",
            cache_exists=cache_there, oci_layout=layout, builder=builder)
        verb = "Build and push" if push else "Validation build (no push) of"
        with actions.group(f"{verb} {plan.image} for {', '.join(settings.platforms)}"):
            result = run_build(docker, request)
        cache = cache_text(result)
        if not push:
            return Outcome(VALIDATED, cache=cache, note=plan.tag_plan.reason)
        digest = pushed_digest(result)
        media_type = str(result.descriptor.get("mediaType") or OCI_INDEX)
        with actions.group(f"Push {plan.image}@{digest} (untagged) and publish its tags"):
            uploaded = upload_layout(client, Path(layout), digest, media_type)
            actions.info(f"Pushed {plan.image}@{digest} by digest ({uploaded} new blobs).")
            publisher = new_publisher(settings, client, actions, digest)
            tags = publisher.publish(plan.tags)
            actions.info(f"Tags naming {digest}: {', '.join(tags)}.")
    platforms = verify(client, digest, settings.platforms)
    return Outcome(BUILT, digest, tuple(tags), platforms, cache=cache,
                   note=" ".join(publisher.notes), release_version=release_version(plan),
                   image=plan.image)


def cache_exists(
    settings: Settings, plan: BuildPlan, client: RegistryClient, actions: Actions
) -> bool:
    """False, with one calm line, when a pushing build has no registry cache to import yet."""
    if settings.cache != "registry" or not plan.tag_plan.push:
        return True
    if client.find(CACHE_TAG) is not None:
        return True
    actions.info(f"No build cache yet at {plan.image}:{CACHE_TAG}: this first build fills it.")
    return False


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


def pushed_digest(result: BuildResult) -> str:
    """The image digest from buildx's metadata file: never from resolving a tag."""
    if not result.digest:
        raise BuildError("buildx built, but reported no image digest in its metadata file.",
                         hint="Update docker buildx (0.10 or later).")
    return result.digest


def verify(client: RegistryClient, digest: str, wanted: tuple[str, ...]) -> dict[str, str]:
    """The pushed index holds every requested platform."""
    platforms = client.platforms(digest)
    if missing := [p for p in wanted if p not in platforms]:
        raise BuildError(
            f"The pushed index {digest} has no manifest for {', '.join(missing)} "
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
    # Loaded here, not with the command: ~4 ms less before the builder probe starts.
    from deploykit.github import GitHubRecorder, summary_links  # noqa: PLC0415

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
    actions.set_output("images", "\n".join(f"{plan.image}:{tag}" for tag in outcome.tags))
    actions.set_output("metadata", metadata_json(plan, outcome))
    actions.set_output("version", plan.tag_plan.version)
    actions.set_output("platforms", platforms_json(outcome.platforms or {}))
    actions.set_output("status", outcome.status)
    actions.info(f"Build {outcome.status}: {pinned or plan.image}")
    actions.add_summary(summary(plan, outcome, settings.platforms, seconds))


def image_labels(settings: Settings, plan: BuildPlan, outcome: Outcome,
                 client: RegistryClient, actions: Actions) -> dict[str, str]:
    """The labels of the pushed image (its Dockerfile's and deploykit's), read back from the
    registry; a validation build's are the ones deploykit set (nothing was pushed)."""
    if not outcome.digest:
        return dict(oci_labels(settings, plan)) if outcome.status == VALIDATED else {}
    try:
        return client.labels(outcome.digest)
    except DeploykitError as exc:  # the image is published: the labels are only a report
        actions.warning(f"Could not read the labels of {plan.image}@{outcome.digest}: "
                        f"{exc.message}", title="metadata without labels")
        return {}


def metadata_json(plan: BuildPlan, outcome: Outcome) -> str:
    """The ``metadata`` output, for steps used to docker/build-push-action's."""
    return json.dumps({
        "image": plan.image,
        "digest": outcome.digest,
        "tags": [{"tag": tag, "reference": f"{plan.image}:{tag}"} for tag in outcome.tags],
        "platforms": dict(outcome.platforms or {}),
        "labels": dict(outcome.labels or {}),
        "status": outcome.status,
    }, sort_keys=True)


def partial_summary(plan: BuildPlan, exc: PartlyPublishedError) -> str:
    """The job summary of a run that failed after publishing some tags."""
    rows = [[f"`{tag}`", f"`{exc.digest}`"] for tag in exc.published]
    return "\n".join([
        f"### Build & Push `{plan.image}`: failed after publishing {len(rows)} tag(s)", "",
        exc.message, "", markdown_table(["Tag published by this run", "Digest"], rows), "",
        "Run the job again: it publishes the missing tags of this image.", ""])


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
