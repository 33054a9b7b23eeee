"""One grammar for image references, registries and repositories (OCI distribution)."""

from __future__ import annotations

import pytest

from deploykit.errors import InputError
from deploykit.reference import (
    ImageReference,
    parse_reference,
    pinned_digest,
    registry_problem,
    repository_problem,
)
from deploykit.settings import load_settings

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("host", [
    "ghcr.io", "docker.io", "localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000",
    "[::1]", "[2001:db8::5]:443", "my-registry.example.com:65535", "a",
])
def test_registry_hosts_accepted(host: str) -> None:
    assert registry_problem(host) == ""


@pytest.mark.parametrize(("host", "why"), [
    ("", "it is empty"),
    ("ghcr io", "is not a host name"),
    ("-ghcr.io", "is not a host name"),
    ("ghcr.io-", "is not a host name"),
    ("ghcr..io", "is not a host name"),
    ("ghcr.io/org", "is not a host name"),
    ("ghcr.io:0", "port '0' is not a number from 1 to 65535"),
    ("ghcr.io:65536", "port '65536' is not a number from 1 to 65535"),
    ("ghcr.io:", "port '' is not a number from 1 to 65535"),
    ("ghcr.io:\u0665\u0660", "is not a number from 1 to 65535"),
    ("::1:5000", "is not a host name"),
    ("[::1", "needs its closing `]`"),
    ("[::g]:5000", "is not an IPv6 address"),
    ("[fe80::1%eth0]:5000", "is not an IPv6 address"),
    ("[::1]5000", "only `:PORT` may follow"),
    ("reg_istry", "is not a host name"),
    ("ghcr.io\n", "is not a host name"),
])
def test_registry_hosts_refused(host: str, why: str) -> None:
    assert why in registry_problem(host)


@pytest.mark.parametrize("repo", ["org/app", "app", "a/b/c", "org/my-app", "org/my--app",
                                  "org/my_app", "org/my__app", "org/my.app", "o1/a2"])
def test_repositories_accepted(repo: str) -> None:
    assert repository_problem(repo) == ""


@pytest.mark.parametrize("repo", ["", "Org/App", "org/", "/app", "org//app", "org/app:tag",
                                  "org/-app", "org/app-", "org/my___app", "org/my._app",
                                  "ghcr.io:5000/app", "org/app\n", "x" * 256])
def test_repositories_refused(repo: str) -> None:
    assert repository_problem(repo)


@pytest.mark.parametrize(("text", "expected"), [
    ("[::1]:5000/org/app:v1", ImageReference("[::1]:5000", "org/app", "v1", None)),
    ("[::1]/org/app@" + DIGEST, ImageReference("[::1]", "org/app", None, DIGEST)),
    ("Registry.Example/org/app", ImageReference("registry.example", "org/app", None, None)),
    ("LOCALHOST/app", ImageReference("localhost", "app", None, None)),
    ("org/my__app:v1", ImageReference("docker.io", "org/my__app", "v1", None)),
])
def test_parse_reference(text: str, expected: ImageReference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("[::1:5000/org/app:v1", "is not a registry host: an IPv6 host needs its closing"),
    ("ghcr.io:99999/org/app:v1", "port '99999' is not a number from 1 to 65535"),
    ("ghcr.io/Org/app:v1", "'Org/app' is not a valid repository name"),
    ("ghcr.io/org/app:v1\n@" + DIGEST, "is not a valid tag"),
    ("ghcr.io/org/app@" + DIGEST + "\n" + "x", "is not a sha256 digest"),
    ("ghcr.io/" + "a" * 250 + ":v1", "the name is longer than 255 characters"),
])
def test_parse_reference_refuses(text: str, why: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_reference(text)
    assert why in caught.value.message
    assert caught.value.input_name == "reference"


@pytest.mark.parametrize("registry", ["[::1]:5000", "127.0.0.1:5000", "ghcr.io:443",
                                      "[::1]:0", "ghcr.io:70000", "host_name", "[::1"])
def test_settings_and_parse_reference_agree(registry: str) -> None:
    """The finding: `[::1]:5000` was refused by settings and accepted by parse_reference."""
    env = {"INPUT_MODE": "build", "INPUT_REGISTRY": registry, "INPUT_IMAGE_REPO": "org/app"}
    try:
        settings_ok = load_settings(env).registry == registry
    except InputError:
        settings_ok = False
    try:
        reference_ok = parse_reference(f"{registry}/org/app:v1").registry == registry
    except InputError:
        reference_ok = False
    assert settings_ok == reference_ok
    assert settings_ok == (registry in ("[::1]:5000", "127.0.0.1:5000", "ghcr.io:443"))


DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(("image", "digest"), [
    (f"127.0.0.1:5000/org/app:v1@{DIGEST}", DIGEST),
    (f"ghcr.io/org/app@{DIGEST}", DIGEST),
    ("ghcr.io/org/app:v1", ""),
    (f"ghcr.io/org/app:{DIGEST[7:]}", ""),  # hex as a tag pins nothing
    ("ghcr.io/org/app@sha256:" + "A" * 64, ""),  # upper-case hex is no digest
    ("", ""),
])
def test_pinned_digest(image: str, digest: str) -> None:
    assert pinned_digest(image) == digest

