from __future__ import annotations

from datetime import UTC, datetime

import pytest

from deploykit.errors import InputError
from deploykit.settings import INPUTS, load_settings, parse_compose_env, read_inputs

BASE = {"INPUT_MODE": "build", "GITHUB_REPOSITORY": "Org/App", "GITHUB_ACTOR": "octocat"}


def settings(**inputs: str):
    env = dict(BASE)
    env.update({f"INPUT_{k.upper()}": v for k, v in inputs.items()})
    return load_settings(env)


def test_defaults_come_from_the_inputs_table() -> None:
    s = settings()
    assert s.mode == "build"
    assert s.registry == "ghcr.io"
    assert s.image_repo == "org/app"
    assert s.registry_username == "octocat"
    assert s.platforms == ("linux/amd64", "linux/arm64")
    assert s.cache == "registry"
    assert s.latest == "auto"
    assert s.dry_run is False
    assert s.rollback_on_failure is True
    assert s.health_timeout == 120
    assert s.production_environments == ("production", "prod")
    assert s.image_name == "ghcr.io/org/app"


def test_both_input_spellings_are_read() -> None:
    env = {**BASE, "INPUT_IMAGE-TAG": "v1.2.3", "INPUT_DRY_RUN": "true"}
    assert read_inputs(env)["image_tag"] == "v1.2.3"
    assert load_settings(env).dry_run is True


def test_settings_are_frozen() -> None:
    s = settings()
    with pytest.raises(AttributeError):
        s.mode = "deploy"  # type: ignore[misc]


def test_secrets_are_not_in_repr() -> None:
    s = settings(registry_password="hunter2-secret", github_token="ghp_tokenvalue")
    assert "hunter2-secret" not in repr(s)
    assert "ghp_tokenvalue" not in repr(s)
    assert s.secrets() == ("hunter2-secret", "ghp_tokenvalue")


@pytest.mark.parametrize(
    ("inputs", "name", "fragment"),
    [
        ({"mode": "bogus"}, "mode", "must be one of build, deploy, rollback; got 'bogus'"),
        ({"dry_run": "yes"}, "dry_run", "must be `true` or `false`, got 'yes'"),
        ({"dry_run": "True"}, "dry_run", "must be `true` or `false`, got 'True'"),
        ({"health_timeout": "10s"}, "health_timeout", "must be a whole number, got '10s'"),
        ({"cache": "s3"}, "cache", "must be one of registry, gha, none; got 's3'"),
        ({"platforms": "amd64"}, "platforms", "'amd64' is not an os/arch[/variant]"),
        ({"image_repo": "Org/App"}, "image_repo", "'Org/App' is not a valid repository name"),
        ({"registry": "ghcr io"}, "registry", "'ghcr io' is not a registry host"),
        ({"smoke_status": "999"}, "smoke_status", "999 is not an HTTP status"),
        ({"build_args": "NOEQUALS"}, "build_args", "line 1 is not KEY=VALUE"),
        ({"build_secrets": "bad id=X"}, "build_secrets", "line 1 is not `id` or `id=ENV_VAR`"),
    ],
)
def test_bad_inputs_name_the_input(inputs: dict[str, str], name: str, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        settings(**inputs)
    assert caught.value.input_name == name
    assert fragment in caught.value.message
    assert caught.value.hint


def test_mode_is_required() -> None:
    with pytest.raises(InputError) as caught:
        load_settings({"GITHUB_REPOSITORY": "o/a"})
    assert caught.value.input_name == "mode"


def test_cli_overrides_win_over_inputs() -> None:
    env = {**BASE, "INPUT_IMAGE_TAG": "v1.0.0"}
    assert load_settings(env, {"image_tag": "v2.0.0"}).image_tag == "v2.0.0"


def test_lists_and_pairs() -> None:
    s = settings(platforms="linux/amd64, linux/arm64,linux/arm/v7,linux/amd64",
                 build_args="A=1\n\nB=x=y", build_secrets="npm\npip=PIP_TOKEN",
                 smoke_url="http://a/\nhttp://b/health")
    assert s.platforms == ("linux/amd64", "linux/arm64", "linux/arm/v7")
    assert s.build_args == (("A", "1"), ("B", "x=y"))
    assert s.build_secrets == (("npm", "npm"), ("pip", "PIP_TOKEN"))
    assert s.smoke_url == ("http://a/", "http://b/health")


def test_build_date_from_source_date_epoch() -> None:
    s = load_settings({**BASE, "SOURCE_DATE_EPOCH": "1700000000"})
    assert s.build_date == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_production_detection_is_case_insensitive() -> None:
    assert settings(environment="Production").is_production
    assert not settings(environment="staging").is_production


def test_compose_env_parsing() -> None:
    text = "# comment\nDATABASE_URL=postgres://u:p@db/x\nexport BROKER_URL='redis://r'\n\n"
    assert parse_compose_env(text) == (
        ("DATABASE_URL", "postgres://u:p@db/x"), ("BROKER_URL", "redis://r"))


def test_compose_env_error_names_line_not_value() -> None:
    with pytest.raises(InputError) as caught:
        parse_compose_env("A=1\nsupersecretvalue\n")
    assert "line 2" in caught.value.message
    assert "supersecretvalue" not in str(caught.value)


def test_compose_env_cannot_set_image_variables() -> None:
    with pytest.raises(InputError) as caught:
        parse_compose_env("IMAGE_TAG=latest")
    assert "IMAGE_TAG" in caught.value.message


def test_every_input_is_snake_case_with_description() -> None:
    for spec in INPUTS:
        assert spec.name == spec.name.lower().replace("-", "_")
        assert spec.description.endswith((".", ")"))
