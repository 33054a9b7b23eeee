"""The docker CLI (``docker``, ``docker buildx``, ``docker compose``) as argv lists.

No shell, no secret in argv: passwords go through stdin. Every child gets an explicit,
minimal environment (see :func:`child_environment`), runs in its own session (a
Ctrl-C to deploykit's process group, or a signal to deploykit, never reaches it:
deploykit decides what happens to it) and has a timeout that covers its whole run; a
child past its timeout is stopped with its whole process group (``docker compose`` is
a plugin process of ``docker``).

A login lives in a temporary ``DOCKER_CONFIG`` that is removed afterwards, so a
self-hosted runner keeps no credential and the user's own config is never written.
Those directories live under one parent per user (``$TMPDIR/deploykit-<uid>``), named
``<pid>-<start time>-<random>``: a run killed with SIGKILL leaves its directory behind,
and the next run removes it once that process is gone.
"""

from __future__ import annotations

import itertools
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from deploykit.actions import Actions, one_line
from deploykit.cliplugins import ORIGINAL_CLI, docker_binary, plugin_binary
from deploykit.errors import (
    DockerError,
    RegistryError,
    RegistryUnreachableError,
    UnauthorizedError,
)

# Kept from the user's config so plugins, builders and contexts still work.
_SHARED_CONFIG_ENTRIES = ("cli-plugins", "buildx", "contexts")
DEFAULT_TIMEOUT = 300.0  # a short command: config, ps, login, buildx inspect --bootstrap
# A streamed command with no bound of its own (a build): GitHub's job limit, 6 h.
STREAM_TIMEOUT = 6 * 3600.0
KILL_GRACE = 2.0  # SIGTERM to the child's group, then SIGKILL after this long
_POLL = 0.1

# What a docker/compose/buildx child may inherit: nothing else (no INPUT_*, no tokens).
_PASSED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SHELL",
    "SSH_AUTH_SOCK", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    "http_proxy", "https_proxy", "no_proxy", "all_proxy",
})
_PASSED_PREFIXES = ("DOCKER_", "BUILDX_", "BUILDKIT_", "LC_")
_SECRET_NAME = re.compile(r"PASS|TOKEN|SECRET|KEY|AUTH", re.IGNORECASE)


def child_environment(env: Mapping[str, str],
                      extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a docker child: PATH, HOME, locale, proxies, the docker
    variables the user set (DOCKER_HOST, DOCKER_CONFIG, ...; none that looks like a
    secret), then ``extra`` (compose_env values, IMAGE_*, build secrets) on top."""
    passed = {name: value for name, value in env.items()
              if name in _PASSED or (name.startswith(_PASSED_PREFIXES)
                                     and not _SECRET_NAME.search(name))}
    # A child with no PATH at all cannot find docker's helpers (credential helpers, ssh).
    passed.setdefault("PATH", os.environ.get("PATH", os.defpath))
    return {**passed, **(extra or {})}


class DockerCLI:
    def __init__(
        self,
        actions: Actions,
        env: Mapping[str, str] | None = None,
        executable: str = "docker",
    ) -> None:
        self.actions = actions
        # The whole environment, to look values up (build secrets); children get less.
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("PATH", os.environ.get("PATH", os.defpath))
        self.executable = executable

    def argv(self, args: Sequence[str]) -> list[str]:
        """``docker <args>``; a compose or buildx command runs its plugin's binary
        directly when the docker CLI would find it (:mod:`deploykit.cliplugins`)."""
        plugin = plugin_binary(args[0], self.env, self.executable) if args else None
        return [plugin, *args] if plugin else [self.executable, *args]

    def run(
        self,
        args: Sequence[str],
        *,
        stdin: str | None = None,
        check: bool = True,
        extra_env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stream: bool = False,
        timeout: float | None = None,
        give_up_at: Callable[[], float | None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker <args>``; ``stream`` sends output to the log as it comes.

        ``timeout`` (default :data:`DEFAULT_TIMEOUT`, :data:`STREAM_TIMEOUT` when
        streamed) covers the whole run. ``give_up_at``
        may name an earlier moment (a cancelled deploy's grace for an in-flight command).
        Past either, the child's process group is stopped and DockerError raised. Any
        exception while it runs (a cancel included) stops it too.
        """
        argv = self.argv(args)
        env = child_environment(self.env, extra_env)
        if argv[0] != self.executable:  # a plugin run directly: what the CLI tells it
            env[ORIGINAL_CLI] = docker_binary(self.env, self.executable) or self.executable
        limit = timeout if timeout is not None else (STREAM_TIMEOUT if stream
                                                     else DEFAULT_TIMEOUT)
        self.actions.debug("$ " + " ".join(argv))
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if stream else subprocess.PIPE,
                env=env, cwd=cwd, start_new_session=True)
        except FileNotFoundError as exc:
            raise DockerError(f"`{self.executable}` was not found.",
                              hint="Install the Docker CLI with the buildx and compose "
                              "plugins (scripts/provision-debian.sh).") from exc
        deadline = time.monotonic() + limit
        try:
            stdout, stderr, why = self._communicate(process, stdin, stream, deadline,
                                                    give_up_at)
        except BaseException:
            stop_group(process)
            raise
        command = " ".join(args[:2])
        if why:
            stop_group(process)
            why = f"timed out after {limit:g} s" if why == "timed out" else why
            raise DockerError(f"`docker {command}` {why}; it was stopped.",
                              hint="A registry or engine that does not answer, or a "
                              "container that does not stop: see the output above.")
        code = process.returncode
        result = subprocess.CompletedProcess(argv, code, stdout, stderr if not stream else stdout)
        if check and code != 0:
            raise self._failure(args, stderr or stdout)
        return result

    def run_detached(
        self,
        args: Sequence[str],
        *,
        extra_env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        give_up_at: Callable[[], float | None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """:meth:`run` with ``stream=True`` for a command that must finish its step even
        if deploykit dies (``docker compose up``): its output goes to a file that is
        followed here, not to a pipe, so a SIGKILLed deploykit does not take the child
        down through a closed pipe. Same session, environment, timeout and stopping."""
        argv = self.argv(args)
        env = child_environment(self.env, extra_env)
        if argv[0] != self.executable:
            env[ORIGINAL_CLI] = docker_binary(self.env, self.executable) or self.executable
        limit = timeout if timeout is not None else STREAM_TIMEOUT
        self.actions.debug("$ " + " ".join(argv))
        directory = private_directory("output")
        path = directory / "output.log"
        try:
            with path.open("wb") as output:
                try:
                    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output,
                                               stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                               start_new_session=True)
                except FileNotFoundError as exc:
                    raise DockerError(f"`{self.executable}` was not found.",
                                      hint="Install the Docker CLI with the buildx and "
                                      "compose plugins (scripts/provision-debian.sh).") from exc
            try:
                stdout, why = self._follow(process, path, time.monotonic() + limit,
                                           give_up_at)
            except BaseException:
                stop_group(process)
                raise
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if why:
            stop_group(process)
            why = f"timed out after {limit:g} s" if why == "timed out" else why
            raise DockerError(f"`docker {' '.join(args[:2])}` {why}; it was stopped.",
                              hint="A registry or engine that does not answer, or a "
                              "container that does not stop: see the output above.")
        if process.returncode != 0:
            raise self._failure(args, stdout)
        return subprocess.CompletedProcess(argv, process.returncode, stdout, stdout)

    def _follow(self, process: subprocess.Popen[bytes], path: Path, deadline: float,
                give_up_at: Callable[[], float | None] | None) -> tuple[str, str]:
        """Stream ``path`` while the child writes it, until the child exits: (output, ''
        or why it was given up)."""
        chunks: list[bytes] = []
        pending = b""
        with path.open("rb") as reader:
            while True:
                done = process.poll() is not None
                data = reader.read()
                if data:
                    chunks.append(data)
                    pending = self._stream_lines(pending + data)
                if done:
                    break
                now = time.monotonic()
                if now >= deadline:
                    return "", "timed out"
                early = give_up_at() if give_up_at else None
                if early is not None and now >= early:
                    return "", "was still running when the deploy was cancelled"
                time.sleep(_POLL)
        if pending:
            self.actions.info(pending.decode("utf-8", "replace"))
        return b"".join(chunks).decode("utf-8", "replace"), ""

    def _communicate(
        self, process: subprocess.Popen[bytes], stdin: str | None, stream: bool,
        deadline: float, give_up_at: Callable[[], float | None] | None,
    ) -> tuple[str, str, str]:
        """Feed stdin, collect (and stream) output until the child exits: (stdout,
        stderr, '' or why it was given up)."""
        if stdin is not None and process.stdin:
            with suppress(BrokenPipeError):
                process.stdin.write(stdin.encode("utf-8"))
            process.stdin.close()
        chunks: dict[int, list[bytes]] = {}
        pending = b""
        with selectors.DefaultSelector() as selector:
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    os.set_blocking(pipe.fileno(), False)
                    selector.register(pipe.fileno(), selectors.EVENT_READ)
                    chunks[pipe.fileno()] = []
            out_fd = process.stdout.fileno() if process.stdout else -1
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return "", "", "timed out"
                early = give_up_at() if give_up_at else None
                if early is not None and now >= early:
                    return "", "", "was still running when the deploy was cancelled"
                if not selector.get_map():
                    if process.poll() is not None:
                        break
                    time.sleep(_POLL)
                    continue
                for key, _ in selector.select(timeout=_POLL):
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fd)
                        continue
                    chunks[key.fd].append(data)
                    if stream and key.fd == out_fd:
                        pending = self._stream_lines(pending + data)
            if stream and pending:
                self.actions.info(pending.decode("utf-8", "replace"))
        stdout = b"".join(chunks.get(out_fd, [])).decode("utf-8", "replace")
        err_fd = process.stderr.fileno() if process.stderr else -1
        stderr = b"".join(chunks.get(err_fd, [])).decode("utf-8", "replace")
        return stdout, stderr, ""

    def _stream_lines(self, data: bytes) -> bytes:
        *lines, rest = data.split(b"\n")
        for line in lines:
            self.actions.info(line.decode("utf-8", "replace").rstrip("\r"))
        return rest

    def _failure(self, args: Sequence[str], output: str) -> DockerError:
        tail = "\n".join(self.actions.redact(output).strip().splitlines()[-30:])
        command = " ".join(args[:2])
        return DockerError(f"`docker {command}` failed:\n{tail}")

    @contextmanager
    def temporary_config(self) -> Iterator[str]:
        """A throwaway DOCKER_CONFIG that keeps the user's plugins and builders."""
        user_config = Path(self.env.get("DOCKER_CONFIG") or Path.home() / ".docker")
        directory = str(new_config_directory())
        for entry in _SHARED_CONFIG_ENTRIES:
            source = user_config / entry
            if source.exists():
                os.symlink(source, Path(directory) / entry)
        previous = self.env.get("DOCKER_CONFIG")
        self.env["DOCKER_CONFIG"] = directory
        try:
            yield directory
        finally:
            if previous is None:
                self.env.pop("DOCKER_CONFIG", None)
            else:
                self.env["DOCKER_CONFIG"] = previous
            shutil.rmtree(directory, ignore_errors=True)

    @contextmanager
    def logged_in(self, registry: str, username: str, password: str) -> Iterator[None]:
        """Log in (when a password is given) inside a temporary DOCKER_CONFIG."""
        with self.temporary_config():
            if password:
                self.actions.mask(password)
                self.login(registry, username, password)
            yield

    def login(self, registry: str, username: str, password: str) -> None:
        if not username:
            raise UnauthorizedError(
                f"No user to log in to {registry} with.",
                hint="Set `registry_username` (default: GITHUB_ACTOR).")
        result = self.run(
            ["login", registry, "--username", username, "--password-stdin"],
            stdin=password, check=False,
        )
        if result.returncode != 0:
            detail = self.actions.redact((result.stderr or result.stdout).strip())
            raise login_error(registry, username, detail)
        self.actions.info(f"Logged in to {registry} as {one_line(username)}.")


# -- why a login failed ----------------------------------------------------------------
_DNS = re.compile(r"no such host|server misbehaving|name resolution|Name or service not "
                  r"known|lookup \S+ on", re.IGNORECASE)
_TLS = re.compile(r"x509:|tls:|certificate|HTTP response to HTTPS client|handshake",
                  re.IGNORECASE)
_UNREACHABLE = re.compile(r"connection refused|i/o timeout|no route to host|network is "
                          r"unreachable|connection reset|deadline exceeded|EOF\b|"
                          r"Client\.Timeout|timed out|\b50[234]\b", re.IGNORECASE)
_AUTH = re.compile(r"unauthorized|incorrect username or password|\b401\b|denied|"
                   r"authentication required|invalid (username|password|credentials)",
                   re.IGNORECASE)


def login_error(registry: str, username: str, detail: str) -> RegistryError:
    """A failed ``docker login`` by its cause: DNS, TLS, unreachable, or credentials."""
    what = f"docker login to {registry} as {username} failed: {detail}"
    if _DNS.search(detail):
        return RegistryUnreachableError(
            what, title="Registry name not found",
            hint=f"The name {registry.rsplit(':', 1)[0]} does not resolve: check `registry` "
            "(a host such as ghcr.io, no scheme) and the runner's DNS.")
    if _TLS.search(detail):
        return RegistryError(
            what, title="Registry TLS error",
            hint=f"The TLS connection to {registry} failed: install the registry's CA on "
            "the host (/etc/docker/certs.d) or fix its certificate; a plain-HTTP registry "
            "must be in the engine's `insecure-registries`.")
    if _UNREACHABLE.search(detail):
        return RegistryUnreachableError(
            what, hint=f"Nothing answered at {registry}: check `registry`, the port, a "
            "firewall or proxy (HTTPS_PROXY), and the registry's status.")
    if _AUTH.search(detail):
        return UnauthorizedError(
            what, hint="Check `registry_username` and `registry_password` (for GHCR: a PAT "
            "with `read:packages`, plus `write:packages` to build).")
    return RegistryError(what, title="Registry login failed",
                         hint="See the message of `docker login` above.")


# -- the process group of a child ---------------------------------------------------
def stop_group(process: subprocess.Popen[bytes], grace: float = KILL_GRACE) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``grace`` s; reap the child."""
    if process.poll() is not None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # helpers it left behind
        return
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            return


# -- temporary DOCKER_CONFIG directories ---------------------------------------------
def config_parent(base: Path | None = None) -> Path:
    """``$TMPDIR/deploykit-<uid>``: this user's, mode 0700, not a symlink (else refused)."""
    parent = (base or Path(tempfile.gettempdir())) / f"deploykit-{os.getuid()}"
    with suppress(FileExistsError):
        parent.mkdir(mode=0o700)
    info = os.lstat(parent)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise DockerError(f"{parent} is not a directory of this user; refusing to keep "
                          "registry credentials there.",
                          hint=f"Remove {parent}, or set TMPDIR to a private directory.")
    os.chmod(parent, 0o700)
    return parent


def new_config_directory(base: Path | None = None) -> Path:
    """A fresh 0700 directory for one login, after removing those of dead runs."""
    return private_directory("docker-config", base)


def private_directory(kind: str, base: Path | None = None) -> Path:
    """A fresh 0700 directory ``<kind>-<pid>-<start>-<random>`` for files that hold a
    secret (a login, a resolved compose file), after removing those of dead runs."""
    parent = config_parent(base)
    remove_stale_configs(parent)
    pid = os.getpid()
    directory = parent / f"{kind}-{pid}-{process_start(pid) or 0}-{uuid.uuid4().hex[:8]}"
    directory.mkdir(mode=0o700)
    return directory


def _read_proc(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot ('' when unknown); tells reuse apart."""
    stat = _read_proc(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def process_alive(pid: int, start: str) -> bool:
    if pid <= 0:
        return False
    stat = _read_proc(f"/proc/{pid}/stat")
    if stat:
        state = stat.rpartition(")")[2].split()[0]
        return state not in ("Z", "X") and (not start or process_start(pid) == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def compose_running(project: str, proc: Path = Path("/proc")) -> bool:
    """Does a ``docker compose ... -p PROJECT`` run on this host? A deploy's detached
    ``up`` outlives a SIGKILLed deploykit and finishes its step: its lock is not stale
    until that step ends (another ``up`` of the project would race it for names)."""
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if "compose" in args and any(
                flag == "-p" and name == project for flag, name in itertools.pairwise(args)):
            return True
    return False


_PRIVATE_NAME = re.compile(r"^[a-z-]+?-(\d+)-(\d+)-[0-9a-f]{8}$")


def remove_stale_configs(parent: Path) -> list[Path]:
    """Remove the private directories whose process is gone (SIGKILLed runs)."""
    removed = []
    for entry in parent.iterdir():
        match = _PRIVATE_NAME.match(entry.name)
        if not match:
            continue
        pid, start = int(match.group(1)), match.group(2)
        if not process_alive(pid, "" if start == "0" else start):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
