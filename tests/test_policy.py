"""The production gate: table tests and properties over the tag grammar."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from deploykit.errors import InputError, PolicyError
from deploykit.policy import DeployTarget, check_deploy_target, check_release

PROD = ("production", "prod")
DIGEST = "sha256:" + "ab" * 32
HINT = ("Pass a release tag such as `image_tag: v1.4.2`, or a digest (`sha256:...` or "
        "`v1.4.2@sha256:...`; `deploykit resolve REGISTRY/REPO:v1.4.2` prints it).")


def check(environment: str, image_tag: str) -> DeployTarget:
    return check_deploy_target(environment=environment, image_tag=image_tag,
                               production_environments=PROD)


@pytest.mark.parametrize(("image_tag", "expected"), [
    ("v1.4.2", DeployTarget("v1.4.2", None, True)),
    ("v0.0.1", DeployTarget("v0.0.1", None, True)),
    (DIGEST, DeployTarget(None, DIGEST, True)),
    (f"v1.4.2@{DIGEST}", DeployTarget("v1.4.2", DIGEST, True)),
])
def test_production_accepts_releases_and_digests(image_tag: str, expected: DeployTarget) -> None:
    assert check("production", image_tag) == expected


@pytest.mark.parametrize(("image_tag", "why"), [
    ("latest", "`latest` moves with every release and is never deployed to production."),
    ("staging-latest", "`staging-latest` is the moving staging alias."),
    ("test-20261127-3", "`test-*` tags are staging builds."),
    ("sha-0123abc", "`sha-*` tags are builds of a commit, not releases."),
    ("v2.0.0-rc.1", "v2.0.0-rc.1 is a pre-release."),
    ("1.4.2", "release tags start with `v` (`v1.4.2`)."),
    ("v1.4", "production takes only a release `vX.Y.Z` or a digest."),
    ("main", "production takes only a release `vX.Y.Z` or a digest."),
    (f"latest@{DIGEST}", "`latest` moves with every release and is never deployed to "
     "production."),
    (f"test-20261127-3@{DIGEST}", "`test-*` tags are staging builds."),
])
def test_production_refuses_everything_else_saying_why(image_tag: str, why: str) -> None:
    with pytest.raises(PolicyError) as error:
        check("production", image_tag)
    assert error.value.message == (f"Refusing to deploy `{image_tag}` to production "
                                   f"environment production: {why}")
    assert error.value.hint == HINT


def test_production_refuses_an_empty_tag() -> None:
    with pytest.raises(PolicyError) as error:
        check("prod", "  ")
    assert error.value.message == "No image tag given for production environment prod."
    assert error.value.hint == HINT


def test_production_names_are_configurable_and_case_insensitive() -> None:
    names = ("live",)
    with pytest.raises(PolicyError):
        check_deploy_target(environment="LIVE", image_tag="latest", production_environments=names)
    staging = check_deploy_target(environment="production", image_tag="test-20261127-1",
                                  production_environments=names)
    assert staging == DeployTarget("test-20261127-1", None, False)
    assert check("Production", "v1.0.0").is_production


@pytest.mark.parametrize(("image_tag", "expected"), [
    ("staging-latest", DeployTarget("staging-latest", None, False)),
    ("test-20261127-3", DeployTarget("test-20261127-3", None, False)),
    ("sha-0123abc", DeployTarget("sha-0123abc", None, False)),
    ("v2.0.0-rc.1", DeployTarget("v2.0.0-rc.1", None, False)),
    ("feature_x", DeployTarget("feature_x", None, False)),
    (DIGEST, DeployTarget(None, DIGEST, False)),
    (f"staging-latest@{DIGEST}", DeployTarget("staging-latest", DIGEST, False)),
])
def test_staging_accepts_any_tag_but_latest(image_tag: str, expected: DeployTarget) -> None:
    assert check("staging", image_tag) == expected


@pytest.mark.parametrize("image_tag", ["latest", f"latest@{DIGEST}"])
def test_no_environment_consumes_latest(image_tag: str) -> None:
    with pytest.raises(PolicyError) as error:
        check("staging", image_tag)
    assert error.value.message == ("Refusing to deploy `latest` to staging: `latest` is only a "
                                   "co-tag of releases and no environment consumes it.")


@pytest.mark.parametrize(("environment", "image_tag", "name", "message"), [
    ("", "v1.0.0", "environment", "Input 'environment': is empty: deploykit must know where "
     "it deploys."),
    ("staging", "", "image_tag", "Input 'image_tag': is empty."),
    ("staging", "ghcr.io/org/app:v1", "image_tag",
     "Input 'image_tag': 'ghcr.io/org/app:v1' is not an image tag."),
    ("production", "v1.0.0@sha256:abc", "image_tag",
     "Input 'image_tag': 'sha256:abc' after `@` is not a digest."),
    ("production", "sha256:" + "AB" * 32, "image_tag",
     f"Input 'image_tag': 'sha256:{'AB' * 32}' is not an image tag."),
    ("staging", "-bad", "image_tag", "Input 'image_tag': '-bad' is not an image tag."),
])
def test_malformed_inputs_are_input_errors(environment: str, image_tag: str, name: str,
                                           message: str) -> None:
    with pytest.raises(InputError) as error:
        check(environment, image_tag)
    assert (error.value.input_name, error.value.message) == (name, message)


def test_deploy_target_reference_prefers_the_digest() -> None:
    assert check("production", f"v1.4.2@{DIGEST}").reference == DIGEST
    assert str(check("production", f"v1.4.2@{DIGEST}")) == f"v1.4.2@{DIGEST}"
    assert check("staging", "test-20261127-1").reference == "test-20261127-1"


# -- properties -------------------------------------------------------------------------
numbers = st.integers(0, 100_000)
hex_digests = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64).map(
    lambda text: f"sha256:{text}")
tags = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}\Z")


@given(numbers, numbers, numbers, st.one_of(st.none(), hex_digests))
def test_every_release_passes_production(major: int, minor: int, patch: int,
                                         digest: str | None) -> None:
    tag = f"v{major}.{minor}.{patch}"
    image_tag = f"{tag}@{digest}" if digest else tag
    assert check("production", image_tag) == DeployTarget(tag, digest, True)


@given(hex_digests)
def test_every_digest_passes_everywhere(digest: str) -> None:
    assert check("production", digest) == DeployTarget(None, digest, True)
    assert check("staging", digest) == DeployTarget(None, digest, False)


@given(numbers, numbers, numbers, st.from_regex(r"\A[0-9A-Za-z-]{1,10}(\.[0-9A-Za-z-]{1,5})?\Z"))
def test_no_pre_release_passes_production(major: int, minor: int, patch: int, pre: str) -> None:
    with pytest.raises(PolicyError):
        check("production", f"v{major}.{minor}.{patch}-{pre}")


@given(tags)
def test_production_accepts_a_tag_only_if_it_is_a_plain_release(tag: str) -> None:
    parts = tag.removeprefix("v").split(".")
    plain_release = (tag.startswith("v") and len(parts) == 3
                     and all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts))
    if plain_release:
        assert check("production", tag) == DeployTarget(tag, None, True)
    else:
        with pytest.raises(PolicyError):
            check("production", tag)


@given(tags)
def test_staging_accepts_every_valid_tag_except_latest(tag: str) -> None:
    assume(tag != "latest")
    assert check("staging", tag) == DeployTarget(tag, None, False)


# -- a rollback's release, gated as a value (issue 21) ------------------------------------
@pytest.mark.parametrize(("environment", "tag", "expected"), [
    ("production", "v1.4.2", DeployTarget("v1.4.2", DIGEST, True)),
    ("production", None, DeployTarget(None, DIGEST, True)),
    ("staging", "test-20260101-1", DeployTarget("test-20260101-1", DIGEST, False)),
])
def test_a_release_value_passes_the_gate_as_it_is(environment: str, tag: str | None,
                                                 expected: DeployTarget) -> None:
    assert check_release(environment=environment, tag=tag, digest=DIGEST,
                         production_environments=PROD) == expected


@pytest.mark.parametrize(("tag", "digest", "refused"), [
    ("test-20260101-1", DIGEST, PolicyError),  # production takes releases only
    ("v1.0.0\n::error::x", DIGEST, InputError),  # a label's tag is text from outside
    ("v1.0.0", "sha256:short", InputError),
])
def test_a_release_value_the_gate_refuses(tag: str, digest: str,
                                          refused: type[Exception]) -> None:
    with pytest.raises(refused):
        check_release(environment="production", tag=tag, digest=digest,
                      production_environments=PROD)
