"""``deploykit resolve REGISTRY/REPO:TAG``: the digest a tag points to."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from deploykit.actions import Actions
from deploykit.commands import Command
from deploykit.errors import InputError
from deploykit.reference import parse_reference
from deploykit.settings import DEPLOY, Settings


def resolve(settings: Settings, actions: Actions, text: str) -> None:
    """Outputs ``digest`` and ``image`` of the reference ``text``. The credentials go to
    ``settings.registry`` only: a reference on another registry is read anonymously."""
    from deploykit.registry import registry_client  # noqa: PLC0415 (only when it runs)

    reference = parse_reference(text)
    if not reference.reference:
        raise InputError("reference", f"{text!r} names no tag or digest.",
                         hint=f"Write e.g. `{reference.name}:v1.4.2`; deploykit never "
                         "assumes `latest`.")
    client = registry_client(settings, actions, registry=reference.registry,
                             repository=reference.repository)
    digest = client.resolve(reference.reference)
    actions.info(f"{reference} -> {digest}")
    actions.set_output("digest", digest)
    actions.set_output("image", f"{reference.name}@{digest}")


def run(settings: Settings, actions: Actions, args: argparse.Namespace,
        env: Mapping[str, str]) -> None:
    resolve(settings, actions, str(args.reference))


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reference", help="REGISTRY/REPO:TAG or REGISTRY/REPO@DIGEST")


def image_repo(args: argparse.Namespace) -> str:
    """REF names its repository. Its registry stays apart from `registry`: the
    credentials belong to `registry` and go to no other host (:func:`resolve`)."""
    return parse_reference(args.reference).repository


COMMAND = Command(
    "resolve", DEPLOY,
    "Print the digest of REGISTRY/REPO:TAG. The credentials go only to --registry "
    "(default ghcr.io): a REF on another registry is read anonymously.",
    "  deploykit resolve ghcr.io/org/app:v1.4.2\n"
    "  INPUT_REGISTRY_PASSWORD=$GHCR_PAT deploykit resolve --registry-username me "
    "ghcr.io/org/app:v1.4.2\n"
    "  INPUT_REGISTRY_PASSWORD=$PASS deploykit resolve --registry 127.0.0.1:5001 \\\n"
    "    --registry-username me 127.0.0.1:5001/org/app:v1",
    run, inputs=("registry", "registry_username", "registry_password"), arguments=arguments)
