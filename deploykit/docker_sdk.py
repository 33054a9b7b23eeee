"""The Docker SDK, imported without paramiko.

``docker.transport`` imports its SSH adapter, and with it paramiko (and invoke and
cryptography), whenever paramiko is installed: about 0.18 s of every deploy's start-up
on the test bed, for a transport deploykit uses only with ``DOCKER_HOST=ssh://``. The
SDK already treats a missing paramiko as "no SSH adapter" (``except ImportError``), so
the import runs with paramiko hidden, and :func:`enable_ssh` imports the adapter for
real when a client for ``ssh://`` is made. Every deploykit module imports the SDK from
here (``from deploykit.docker_sdk import docker``).
"""

from __future__ import annotations

import importlib
import sys


def _import_without_paramiko() -> None:
    if "docker" in sys.modules or "paramiko" in sys.modules:
        return  # imported already (or paramiko is loaded anyway): nothing to save
    sys.modules["paramiko"] = None  # type: ignore[assignment]  # "import paramiko" fails
    try:
        importlib.import_module("docker")
    finally:
        del sys.modules["paramiko"]


_import_without_paramiko()

import docker  # noqa: E402
import docker.api.client  # noqa: E402
import docker.errors  # noqa: E402


def enable_ssh() -> None:
    """Load the SDK's SSH adapter (``ssh://`` engines; the system ``ssh`` client is used,
    paramiko is only imported by the adapter's module)."""
    if getattr(docker.api.client, "SSHHTTPAdapter", None) is not None:
        return
    sshconn = importlib.import_module("docker.transport.sshconn")
    docker.api.client.SSHHTTPAdapter = sshconn.SSHHTTPAdapter


__all__ = ["docker", "enable_ssh"]
