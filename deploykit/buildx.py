"""Raw ``docker buildx`` calls: builder choice, the build argv, its results.

Everything here goes through :class:`DockerCLI`. Orchestration (which tags,
whether to push, the write-once guard, verification) lives in ``build.py``. A
build that pushes writes an OCI layout folder (no tag, no ``--push``): the docker
driver cannot push by digest, so ``publish.py`` uploads it and tags it.
"""

from __future__ import annotations

import json
import platform as host_platform
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from deploykit.dockercli import DockerCLI
from deploykit.errors import BuildError, DeniedError, InputError
from deploykit.registry_errors import denied_error

if TYPE_CHECKING:
    import tenacity

BUILDER_NAME = "deploykit"
# The docker driver's worker has this label only on the containerd image store (moby's
# classic worker sets no containerd label).
CONTAINERD_WORKER_LABEL = "org.mobyproject.buildkit.worker.containerd.namespace"
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
FAILURE_TAIL_LINES = 30
GHA_CACHE_ENV = ("ACTIONS_CACHE_URL", "ACTIONS_RUNTIME_TOKEN")
# Also read by buildx for the v2 cache service; passed through when present.
GHA_OPTIONAL_ENV = ("ACTIONS_RESULTS_URL", "ACTIONS_CACHE_SERVICE_V2")

QEMU_HINT = (
    "Register QEMU for the foreign platforms on the runner: "
    "`docker run --privileged --rm tonistiigi/binfmt --install all` "
    "(or on Debian/Ubuntu `sudo apt-get install qemu-user-static binfmt-support`), "
    "or on GitHub-hosted runners add `docker/setup-qemu-action` before this step. "
    "Or drop the platform from `platforms`."
)

# Docker architecture -> QEMU binfmt handler name.
_QEMU_NAMES = {
    "amd64": "x86_64", "386": "i386", "arm64": "aarch64", "arm": "arm",
    "riscv64": "riscv64", "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x",
    "mips64le": "mips64el", "mips64": "mips64", "loong64": "loongarch64",
}
# uname -m -> Docker architectures that run natively there.
_NATIVE = {
    "x86_64": ("amd64", "386"), "amd64": ("amd64", "386"),
    "aarch64": ("arm64", "arm"), "arm64": ("arm64", "arm"),
    "armv7l": ("arm",), "riscv64": ("riscv64",), "ppc64le": ("ppc64le",),
    "s390x": ("s390x",),
}
# A Dockerfile step that does work: `#7 [linux/arm64 2/3] RUN ...` (FROM excluded: it
# shows DONE, not CACHED, when every later step comes from cache).
_STEP_RE = re.compile(r"^#(\d+) \[(?!internal\b)[^\]]*\b\d+/\d+\] (?!FROM\b)")
_VERTEX_RE = re.compile(r"^#(\d+) (.*)$")
# GHCR: "failed to push ghcr.io/o/a:v1: denied: permission_denied: write_package"
_DENIED_RE = re.compile(r"failed to push (\S+?): (denied: .*)$", re.MULTILINE)
# A registry that failed (5xx) or throttled (429) a request of the push: worth pushing again.
_TRANSIENT_PUSH_RE = re.compile(
    r"unexpected status from \w+ request to \S+: (5\d\d|429)\b[^\n]*", re.MULTILINE)
PUSH_ATTEMPTS = 3
# None: exponential, 2 s doubling up to 20 s (tenacity loads with the first build).
PUSH_RETRY_WAIT: tenacity.wait.wait_base | None = None


@dataclass(frozen=True)
class Builder:
    """A buildx builder: ``name`` empty means the current one."""

    name: str
    driver: str
    platforms: tuple[str, ...]
    created: bool = False
    # Its worker says it runs on the containerd image store (the docker driver's
    # labels, buildx 0.11+): then `docker info` need not be asked.
    containerd_store: bool = False

    @property
    def argv(self) -> list[str]:
        return ["--builder", self.name] if self.name else []

    @property
    def store_unknown(self) -> bool:
        """The docker driver, and its labels do not say which image store it uses."""
        return self.driver == "docker" and not self.containerd_store


@dataclass(frozen=True)
class BuildRequest:
    context: str
    dockerfile: str
    platforms: tuple[str, ...]
    push: bool
    labels: tuple[tuple[str, str], ...] = ()
    build_args: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, str], ...] = ()  # (id, environment variable)
    target: str = ""
    provenance: bool = False
    sbom: bool = False
    cache: str = "none"
    cache_ref: str = ""
    cache_exists: bool = True  # False: no registry cache yet, so nothing to import
    oci_layout: str = ""  # a push exports here (an OCI layout folder); deploykit uploads it
    builder: Builder = field(default_factory=lambda: Builder("", "", ()))


@dataclass(frozen=True)
class BuildResult:
    digest: str
    descriptor: Mapping[str, object]
    cached_steps: int
    total_steps: int
    output: str


# -- builder ------------------------------------------------------------------
def parse_inspect(text: str) -> Builder:
    """Name, driver, platforms and the image store from ``docker buildx inspect`` output."""
    name = driver = ""
    platforms: list[str] = []
    containerd = False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "Name" and not name:
            name = value
        elif key == "Driver" and not driver:
            driver = value
        elif key == "Platforms":
            platforms.extend(p.strip().rstrip("*") for p in value.split(",") if p.strip())
        elif key == CONTAINERD_WORKER_LABEL:
            containerd = True
    return Builder(name, driver, tuple(dict.fromkeys(platforms)), containerd_store=containerd)


def missing_platforms(builder: Builder, wanted: Sequence[str]) -> list[str]:
    return [p for p in wanted if p not in builder.platforms]


def foreign_platforms(wanted: Sequence[str], machine: str | None = None) -> list[str]:
    """Platforms the host CPU cannot run natively (they need QEMU)."""
    native = _NATIVE.get((machine or host_platform.machine()).lower(), ())
    return [p for p in wanted if p.split("/")[1] not in native]


def qemu_registered(platform: str, binfmt_dir: str | None = None) -> bool:
    arch = platform.split("/")[1]
    handler = Path(binfmt_dir or BINFMT_DIR) / f"qemu-{_QEMU_NAMES.get(arch, arch)}"
    try:
        return handler.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def check_emulation(
    builder: Builder, wanted: Sequence[str], *, machine: str | None = None,
    binfmt_dir: str | None = None,
) -> None:
    """Fail before building when a foreign platform has no emulator at all."""
    unsupported = [
        p for p in foreign_platforms(wanted, machine)
        if p not in builder.platforms and not qemu_registered(p, binfmt_dir)
    ]
    if unsupported:
        raise BuildError(
            f"Input 'platforms': {', '.join(unsupported)} cannot be built on this "
            f"{machine or host_platform.machine()} runner: QEMU is not registered in binfmt_misc "
            f"and builder {builder.name or 'default'} does not list "
            f"{'it' if len(unsupported) == 1 else 'them'}.",
            hint=QEMU_HINT, title="QEMU missing for multi-arch build")


INSPECT_ARGV = ("buildx", "inspect")
STORE_ARGV = ("info", "--format", "{{json .DriverStatus}}")


class BuilderProbe:
    """The read-only questions of :func:`select_builder` asked in the background.

    ``docker buildx inspect`` starts when the ``with`` block is entered, in a thread,
    while the tag plan reads the registry: a docker CLI start-up costs 0.05-0.25 s, and
    nothing in it depends on the plan. ``docker info`` (the image store) follows in the
    same thread only when the build may need the store and the builder's labels do not
    tell (``docker info`` also starts every CLI plugin). Both change nothing on the host,
    so a run that then skips or refuses the build has only asked. Leaving the block
    gives up on a question still running (its child is stopped, as a cancelled command
    is) and waits for the thread: no child outlives the run. An answer's error (docker
    missing, a failed inspect) is raised where :func:`select_builder` reads it, so only
    a build reports it.
    """

    def __init__(self, docker: DockerCLI, *, store: bool) -> None:
        self._docker = docker
        self._store = store
        self._answers: dict[tuple[str, ...], subprocess.CompletedProcess[str] | Exception] = {}
        self._thread = threading.Thread(target=self._ask_all, daemon=True,
                                        name="deploykit-buildx-probe")
        self._given_up: float | None = None

    def __enter__(self) -> BuilderProbe:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._given_up = time.monotonic()
        self._thread.join()

    def _ask_all(self) -> None:
        inspected = self._ask(INSPECT_ARGV)
        if inspected is not None and self._store and self._given_up is None and \
                parse_inspect(inspected.stdout).store_unknown:
            self._ask(STORE_ARGV)

    def _ask(self, argv: tuple[str, ...]) -> subprocess.CompletedProcess[str] | None:
        try:
            answer = self._docker.run(list(argv), check=argv == INSPECT_ARGV,
                                      give_up_at=lambda: self._given_up)
        except Exception as exc:  # raised in the main thread, by answer()
            self._answers[argv] = exc
            return None
        self._answers[argv] = answer
        return answer

    def answer(self, argv: tuple[str, ...]) -> subprocess.CompletedProcess[str] | None:
        """The answer to ``argv`` once the probe is done; None when it was not asked."""
        self._thread.join()
        answer = self._answers.get(argv)
        if isinstance(answer, Exception):
            raise answer
        return answer


def select_builder(
    docker: DockerCLI, platforms: Sequence[str], *, exports_cache: bool = False,
    machine: str | None = None, binfmt_dir: str | None = None,
    probe: BuilderProbe | None = None,
) -> Builder:
    """The current builder when it can do the build; else a docker-container one.

    ``probe`` holds the answers of the read-only calls when they were asked ahead.
    """
    inspected = probe.answer(INSPECT_ARGV) if probe else None
    current = parse_inspect((inspected or docker.run(list(INSPECT_ARGV))).stdout)
    check_emulation(current, platforms, machine=machine, binfmt_dir=binfmt_dir)
    if missing := missing_platforms(current, platforms):
        return _container_builder(docker, platforms, current,
                                  f"it lists no {', '.join(missing)}")
    needs_store = len(platforms) > 1 or exports_cache
    if needs_store and current.store_unknown and not _containerd_store(docker, probe):
        wants = "multi-platform builds" if len(platforms) > 1 else "cache export"
        return _container_builder(docker, platforms, current, "the docker driver without "
                                  f"the containerd image store cannot do {wants}")
    docker.actions.info(f"Using buildx builder {current.name} ({current.driver}): "
                        f"it builds {', '.join(platforms)}.")
    return current


def _containerd_store(docker: DockerCLI, probe: BuilderProbe | None = None) -> bool:
    result = (probe.answer(STORE_ARGV) if probe else None) or \
        docker.run(list(STORE_ARGV), check=False)
    return "io.containerd.snapshotter" in result.stdout


def _container_builder(
    docker: DockerCLI, platforms: Sequence[str], current: Builder, reason: str
) -> Builder:
    docker.actions.notice(
        f"Builder {current.name or 'default'} cannot be used ({reason}); using a "
        f"docker-container builder `{BUILDER_NAME}` instead.", title="buildx builder")
    existing = docker.run(["buildx", "inspect", BUILDER_NAME, "--bootstrap"], check=False)
    if existing.returncode != 0:
        created = docker.run(["buildx", "create", "--name", BUILDER_NAME,
                              "--driver", "docker-container",
                              "--driver-opt", "network=host", "--bootstrap"], check=False)
        if created.returncode != 0:
            raise BuildError(
                f"Could not create the docker-container builder `{BUILDER_NAME}`: "
                f"{_tail(docker.actions.redact(created.stderr or created.stdout), 10)}",
                hint="The builder runs the moby/buildkit image: the runner must be able to "
                "pull it. Or enable the containerd image store in /etc/docker/daemon.json "
                '(`{"features":{"containerd-snapshotter":true}}`) and use the default '
                "builder.")
        existing = docker.run(["buildx", "inspect", BUILDER_NAME])
    builder = parse_inspect(existing.stdout)
    builder = Builder(BUILDER_NAME, builder.driver, builder.platforms, created=True)
    if missing := missing_platforms(builder, platforms):
        raise BuildError(
            f"Input 'platforms': builder `{BUILDER_NAME}` cannot build {', '.join(missing)} "
            f"(it lists {', '.join(builder.platforms) or 'nothing'}).", hint=QEMU_HINT,
            title="QEMU missing for multi-arch build")
    return builder


# -- argv ---------------------------------------------------------------------
def cache_flags(
    cache: str, cache_ref: str, *, export: bool, cache_exists: bool = True
) -> list[str]:
    """``--cache-from``/``--cache-to``; a build that pushes nothing exports no cache.

    A registry cache that does not exist yet is not imported: buildx would print an
    ``ERROR`` line for it (the first build of a repository is not a failure).
    """
    if cache == "registry":
        flags = ["--cache-from", f"type=registry,ref={cache_ref}"] if cache_exists else []
        if export:
            flags += ["--cache-to", f"type=registry,ref={cache_ref},mode=max"]
        return flags
    if cache == "gha":
        flags = ["--cache-from", "type=gha"]
        return [*flags, "--cache-to", "type=gha,mode=max"] if export else flags
    return []


def build_argv(request: BuildRequest, metadata_file: str) -> list[str]:
    """The full ``docker buildx build`` argv. Secrets travel by name, never by value."""
    argv = ["buildx", "build", *request.builder.argv, "--progress=plain",
            "--platform", ",".join(request.platforms), "-f", request.dockerfile,
            "--metadata-file", metadata_file,
            f"--provenance={str(request.provenance).lower()}",
            f"--sbom={str(request.sbom).lower()}"]
    for key, value in request.labels:
        argv += ["--label", f"{key}={value}"]
    for key, value in request.build_args:
        argv += ["--build-arg", f"{key}={value}"]
    for secret_id, env_name in request.secrets:
        argv += ["--secret", f"id={secret_id},env={env_name}"]
    if request.target:
        argv += ["--target", request.target]
    argv += cache_flags(request.cache, request.cache_ref, export=request.push,
                        cache_exists=request.cache_exists)
    # A push goes to a local OCI layout first (the docker driver cannot push by digest);
    # deploykit uploads it untagged, then tags it. A validation build keeps its result in
    # the build cache only: no dangling image.
    argv += ["--output", f"type=oci,dest={request.oci_layout},tar=false"] if request.push \
        else ["--output", "type=cacheonly"]
    argv.append(request.context)
    return argv


def build_env(request: BuildRequest, env: Mapping[str, str]) -> dict[str, str]:
    """Environment the build needs: secret sources and the GitHub cache service."""
    missing = [name for _, name in request.secrets if name not in env]
    if missing:
        raise InputError("build_secrets", f"environment variable {', '.join(missing)} "
                         "is not set.", hint="Pass the secret to this step's `env:`, e.g. "
                         f"`{missing[0]}: ${{{{ secrets.{missing[0]} }}}}`.")
    passed = {name: env[name] for _, name in request.secrets}
    if request.cache == "gha":
        absent = [name for name in GHA_CACHE_ENV if not env.get(name)]
        if absent:
            raise InputError("cache", f"`gha` needs {' and '.join(absent)}, which only "
                             "GitHub Actions sets.", hint="Use `cache: registry` outside "
                             "GitHub Actions (or `cache: none`).")
        passed.update({n: env[n] for n in (*GHA_CACHE_ENV, *GHA_OPTIONAL_ENV) if n in env})
    return passed


# -- run ----------------------------------------------------------------------
class TransientPushError(BuildError):
    """The registry answered 5xx or 429 during the push."""


def run_build(docker: DockerCLI, request: BuildRequest) -> BuildResult:
    """Run the build, streaming its plain progress; BuildError on failure.

    A push the registry failed with 5xx/429 is pushed again (the layers are cached, and
    the same content gives the same digest, so a second push is idempotent).
    """
    extra_env = build_env(request, docker.env)
    for value in extra_env.values():
        docker.actions.mask(value)
    import tenacity  # noqa: PLC0415  (see PUSH_RETRY_WAIT)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(PUSH_ATTEMPTS),
        wait=PUSH_RETRY_WAIT or tenacity.wait_exponential(multiplier=2, max=20),
        retry=tenacity.retry_if_exception_type(TransientPushError),
        before_sleep=lambda state: docker.actions.warning(
            f"{_message_of(state)} Pushing again "
            f"(attempt {state.attempt_number + 1} of {PUSH_ATTEMPTS}).",
            title="Registry error during the push"),
        reraise=True)
    return retrying(_build_once, docker, request, extra_env)


def _message_of(state: tenacity.RetryCallState) -> str:
    error = state.outcome.exception() if state.outcome else None
    return error.message if isinstance(error, BuildError) else str(error)


def _build_once(
    docker: DockerCLI, request: BuildRequest, extra_env: Mapping[str, str]
) -> BuildResult:
    with tempfile.TemporaryDirectory(prefix="deploykit-build-") as directory:
        metadata_file = str(Path(directory) / "metadata.json")
        argv = build_argv(request, metadata_file)
        result = docker.run(argv, stream=True, check=False, extra_env=extra_env)
        output = docker.actions.redact(result.stdout or "")
        if result.returncode != 0:
            if denied := push_denied(output):
                raise denied
            if request.push and (transient := _TRANSIENT_PUSH_RE.search(output)):
                raise TransientPushError(
                    f"The registry failed the push: {transient.group(0)}.",
                    hint="The registry had an outage or throttled the push; check its status "
                    "page and run the job again (nothing half-pushed is ever tagged).")
            raise BuildError(
                f"docker buildx build failed (exit {result.returncode}):\n"
                f"{failing_step_output(output)}",
                hint="The output above is the failing step's; fix the Dockerfile or the "
                "context and push again.")
        metadata = read_metadata(metadata_file)
    cached, total = count_cache_hits(output)
    return BuildResult(
        digest=str(metadata.get("containerimage.digest", "")),
        descriptor=_mapping(metadata.get("containerimage.descriptor")),
        cached_steps=cached, total_steps=total, output=output)


def push_denied(output: str) -> DeniedError | None:
    """The registry refused the push (e.g. GHCR's ``write_package``): a DeniedError."""
    match = _DENIED_RE.search(output)
    if not match:
        return None
    reference = match.group(1)
    return denied_error(reference.split("/", 1)[0], f"push {reference}", match.group(2))


def read_metadata(path: str) -> dict[str, object]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise BuildError(f"buildx wrote an unreadable metadata file: {exc}.",
                         hint="Update docker buildx to 0.10 or later.") from exc
    return data if isinstance(data, dict) else {}


def _mapping(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, dict) else {}


def count_cache_hits(output: str) -> tuple[int, int]:
    """``(cached, total)`` Dockerfile steps (FROM aside) from ``--progress=plain`` output."""
    steps: set[str] = set()
    cached: set[str] = set()
    for line in output.splitlines():
        if match := _STEP_RE.match(line):
            steps.add(match.group(1))
        elif (match := _VERTEX_RE.match(line)) and match.group(2).strip() == "CACHED":
            cached.add(match.group(1))
    return len(cached & steps), len(steps)


def failing_step_output(output: str, limit: int = FAILURE_TAIL_LINES) -> str:
    """The failing step's own lines (its title, output and error), else the tail."""
    lines = output.splitlines()
    failed = {m.group(1) for line in lines
              if (m := _VERTEX_RE.match(line)) and m.group(2).startswith("ERROR")}
    step_lines = [line for line in lines
                  if (m := _VERTEX_RE.match(line)) and m.group(1) in failed]
    final = [line for line in lines if line.startswith("ERROR:")]
    picked = step_lines[-limit:] + final[-1:] if step_lines else lines[-limit:]
    return "\n".join(picked)


def _tail(text: str, count: int) -> str:
    return "\n".join(text.strip().splitlines()[-count:])
