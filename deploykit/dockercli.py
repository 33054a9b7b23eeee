"""The docker CLI (``docker``, ``docker buildx``, ``docker compose``) as argv lists.

No shell, no secret in argv: passwords go through stdin. A login lives in a
temporary ``DOCKER_CONFIG`` that is removed afterwards, so a self-hosted
runner keeps no credential and the user's own config is never written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from deploykit.actions import Actions
from deploykit.errors import DockerError, UnauthorizedError

# Kept from the user's config so plugins, builders and contexts still work.
_SHARED_CONFIG_ENTRIES = ("cli-plugins", "buildx", "contexts")


class DockerCLI:
    def __init__(
        self,
        actions: Actions,
        env: Mapping[str, str] | None = None,
        executable: str = "docker",
    ) -> None:
        self.actions = actions
        self.env = dict(os.environ if env is None else env)
        # A child with no PATH at all cannot find docker's helpers (credential helpers, ssh).
        self.env.setdefault("PATH", os.environ.get("PATH", os.defpath))
        self.executable = executable

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
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker <args>``; ``stream`` sends output to the log as it comes."""
        argv = [self.executable, *args]
        env = {**self.env, **(extra_env or {})}
        self.actions.debug("$ " + " ".join(argv))
        try:
            if stream:
                return self._run_streaming(argv, env, stdin, cwd, check=check, timeout=timeout)
            result = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, env=env, cwd=cwd,
                check=False, timeout=timeout,
            )
        except FileNotFoundError as exc:
            raise DockerError(f"`{self.executable}` was not found.",
                              hint="Install the Docker CLI with the buildx and compose "
                              "plugins (scripts/provision-debian.sh).") from exc
        except subprocess.TimeoutExpired as exc:
            raise DockerError(f"`docker {' '.join(args[:2])}` timed out after {timeout} s.") \
                from exc
        if check and result.returncode != 0:
            raise self._failure(args, result.stderr or result.stdout)
        return result

    def _run_streaming(
        self, argv: list[str], env: dict[str, str], stdin: str | None, cwd: str | None,
        *, check: bool, timeout: float | None,
    ) -> subprocess.CompletedProcess[str]:
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
        )
        if stdin is not None and process.stdin:
            process.stdin.write(stdin)
            process.stdin.close()
        lines: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            self.actions.info(line.rstrip("\n"))
        code = process.wait(timeout=timeout)
        output = "".join(lines)
        result = subprocess.CompletedProcess(argv, code, output, output)
        if check and code != 0:
            raise self._failure(argv[1:], output)
        return result

    def _failure(self, args: Sequence[str], output: str) -> DockerError:
        tail = "\n".join(self.actions.redact(output).strip().splitlines()[-30:])
        command = " ".join(args[:2])
        return DockerError(f"`docker {command}` failed:\n{tail}")

    @contextmanager
    def temporary_config(self) -> Iterator[str]:
        """A throwaway DOCKER_CONFIG that keeps the user's plugins and builders."""
        user_config = Path(self.env.get("DOCKER_CONFIG") or Path.home() / ".docker")
        directory = tempfile.mkdtemp(prefix="deploykit-docker-config-")
        os.chmod(directory, 0o700)
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
            raise UnauthorizedError(
                f"docker login to {registry} as {username} failed: {detail}",
                hint="Check `registry_username` and `registry_password` (for GHCR: a PAT "
                "with `read:packages`, plus `write:packages` to build).")
        self.actions.info(f"Logged in to {registry} as {username}.")
