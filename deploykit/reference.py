"""Image references, registries and repositories: one grammar for every caller.

The grammar is the OCI distribution one (``distribution/reference``)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path-component [ "/" path-component ]*   (<= 255 chars)
    domain     := host [ ":" port ]
    host       := domain-name | IPv4 address | "[" IPv6 address "]"
    path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}

Digests are ``sha256:<64 hex>`` only: deploykit pins with sha256. A name whose
first component has no ``.`` or ``:``, is not ``localhost`` and is not an IPv6
host is on Docker Hub (``docker.io``, ``library/`` for a single component).
Pure: no I/O. ``settings`` and ``registry`` both validate through this module.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from deploykit.errors import InputError, shown

DOCKER_HUB = "docker.io"
NAME_MAX_LENGTH = 255  # distribution's NameTotalLengthMax: registry + "/" + repository

_DIGEST = r"sha256:[0-9a-f]{64}"  # the one digest pattern deploykit writes
DIGEST_RE = re.compile(rf"^{_DIGEST}\Z")
_PINNED_RE = re.compile(rf"@({_DIGEST})")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*\Z")
_DOMAIN_COMPONENT = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
_DOMAIN_NAME_RE = re.compile(rf"^{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*\Z")
_PORT_RE = re.compile(r"^[0-9]{1,5}\Z")


def is_digest(value: str) -> bool:
    return bool(DIGEST_RE.match(value))


def pinned_digest(image: str) -> str:
    """The digest ``image`` is pinned to (``name[:tag]@sha256:<hex>``); "" when none."""
    found = _PINNED_RE.search(image)
    return found.group(1) if found else ""


def is_tag(value: str) -> bool:
    return bool(TAG_RE.match(value))


def registry_problem(value: str) -> str:
    """Why ``value`` is not ``host[:port]`` (empty when it is one).

    ``value`` is expected lower case; ``[::1]:5000`` style IPv6 hosts are accepted.
    """
    if not value:
        return "it is empty"
    if value.startswith("["):
        return _ipv6_host_problem(value)
    host, colon, port = value.partition(":")
    if not _DOMAIN_NAME_RE.match(host):
        return (f"{shown(host)} is not a host name (letters, digits, `-` and `.`; an IPv6 "
                "address goes in brackets, e.g. `[::1]:5000`)")
    return _port_problem(port) if colon else ""


def repository_problem(value: str) -> str:
    """Why ``value`` is not a repository path such as ``org/app`` (empty when it is one)."""
    if not value:
        return "it is empty"
    if not REPOSITORY_RE.match(value):
        return ("a repository is lower-case path components (letters, digits, separated by "
                "`.`, `_`, `__` or `-`) joined by `/`")
    if len(value) > NAME_MAX_LENGTH:
        return f"it is {len(value)} characters long; at most {NAME_MAX_LENGTH}"
    return ""


def _ipv6_host_problem(value: str) -> str:
    address, bracket, port = value[1:].partition("]")
    if not bracket:
        return "an IPv6 host needs its closing `]`"
    if not _is_ipv6(address):
        return f"{shown(address)} is not an IPv6 address"
    if port and not port.startswith(":"):
        return "only `:PORT` may follow the `]` of an IPv6 host"
    return _port_problem(port[1:]) if port else ""


def _is_ipv6(text: str) -> bool:
    if "%" in text:  # a zone index names a local interface, never a registry
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port_problem(port: str) -> str:
    if not _PORT_RE.match(port) or not 1 <= int(port) <= 65535:
        return f"port {shown(port)} is not a number from 1 to 65535"
    return ""


@dataclass(frozen=True)
class ImageReference:
    """``registry/repository[:tag][@digest]``, split into its parts."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        return self.digest or self.tag or ""

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageReference:
    """Split an image reference; a name without a registry host is on Docker Hub."""
    value = text.strip()
    rest, at, digest = value.partition("@")
    if at and not is_digest(digest):
        raise _bad_reference(text, f"{shown(digest)} is not a sha256 digest (sha256:<64 hex>).")
    registry, path = _split_domain(rest)
    tag: str | None = None
    colon = path.rfind(":")
    if colon > path.rfind("/"):
        path, tag = path[:colon], path[colon + 1:]
        if not is_tag(tag):
            raise _bad_reference(text, f"{shown(tag)} is not a valid tag.")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    why = registry_problem(registry)
    if why:
        raise _bad_reference(text, f"{shown(registry)} is not a registry host: {why}.")
    why = repository_problem(path)
    if why:
        raise _bad_reference(text, f"{shown(path)} is not a valid repository name: {why}.")
    if len(registry) + 1 + len(path) > NAME_MAX_LENGTH:
        raise _bad_reference(text, f"the name is longer than {NAME_MAX_LENGTH} characters.")
    return ImageReference(registry, path, tag, digest or None)


def _split_domain(name: str) -> tuple[str, str]:
    first, slash, remainder = name.partition("/")
    is_domain = ("." in first or ":" in first or first == "localhost" or first[:1] == "["
                 or first != first.lower())
    if slash and is_domain:
        return first.lower(), remainder
    return DOCKER_HUB, name


def _bad_reference(text: str, why: str) -> InputError:
    return InputError("reference", f"{shown(text)}: {why}",
                      hint="Write REGISTRY/REPO:TAG, REGISTRY/REPO@sha256:<64 hex> or "
                      "REGISTRY/REPO:TAG@sha256:..., e.g. `ghcr.io/org/app:v1.4.2`.")


__all__ = [
    "DIGEST_RE",
    "DOCKER_HUB",
    "TAG_RE",
    "ImageReference",
    "is_digest",
    "is_tag",
    "parse_reference",
    "pinned_digest",
    "registry_problem",
    "repository_problem",
]
