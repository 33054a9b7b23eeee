from __future__ import annotations

import contextlib
import random
import time
from datetime import UTC, datetime

import pytest

from deploykit.errors import InputError
from deploykit.input_values import parse_compose_env
from deploykit.inputs import INPUTS
from deploykit.settings import InvalidInputs, load_settings, read_inputs, unused_inputs

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


def test_a_kebab_spelling_is_refused_naming_the_snake_case_input() -> None:
    """Issue 20: the runner exports INPUT_DRY_RUN=false beside INPUT_DRY-RUN=true and the
    default won (a real deploy). The undeclared spelling is never read: it is refused."""
    env = {**BASE, "INPUT_DRY-RUN": "true", "INPUT_DRY_RUN": "false"}
    assert "dry_run" not in read_inputs(env) or read_inputs(env)["dry_run"] == "false"
    with pytest.raises(InputError) as caught:
        load_settings(env)
    assert caught.value.input_name == "dry_run"
    assert "`dry-run`" in str(caught.value)
    assert "Rename `dry-run` to `dry_run`" in caught.value.hint


def test_a_kebab_spelling_is_refused_even_alone() -> None:
    with pytest.raises(InputError, match="spelled `image-tag`"):
        load_settings({**BASE, "INPUT_IMAGE-TAG": "v1.2.3"})


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
        ({"health_timeout": "10s"}, "health_timeout",
         "must be a whole number (digits 0-9), got '10s'"),
        ({"cache": "s3"}, "cache", "must be one of registry, gha, none; got 's3'"),
        ({"platforms": "amd64"}, "platforms", "'amd64' is not an os/arch[/variant]"),
        ({"image_repo": "Org/App"}, "image_repo", "'Org/App' is not a valid repository name"),
        ({"registry": "ghcr io"}, "registry", "'ghcr io' is not a registry host"),
        ({"smoke_status": "999"}, "smoke_status", "must be from 100 to 599, got '999'"),
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


def deploy_settings(env: dict[str, str] | None = None, **inputs: str):
    base = {**BASE, "INPUT_MODE": "deploy", **(env or {})}
    base.update({f"INPUT_{k.upper()}": v for k, v in inputs.items()})
    return load_settings(base)


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        # "\u0661\u0662".isdigit() is True, and int() took it (or crashed on others)
        ("health_timeout", "\u0661\u0662", "must be a whole number (digits 0-9), got"),
        ("lock_timeout", "\uff11\uff12", "must be a whole number (digits 0-9), got"),
        ("smoke_timeout", "\u00b2", "must be a whole number (digits 0-9), got '\u00b2'"),
        ("health_settle", "-1", "must be a whole number (digits 0-9), got '-1'"),
        ("health_timeout", "1e3", "must be a whole number (digits 0-9), got '1e3'"),
        ("health_timeout", "0", "must be from 1 to 86400, got '0'"),
        ("health_timeout", "86401", "must be from 1 to 86400, got '86401'"),
        ("lock_timeout", "1" + "0" * 30, "must be from 0 to 86400, got '1000000000000000000000000"
         "000000'"),
        ("lock_timeout", "9" * 4000, f"must be from 0 to 86400, got '{'9' * 80}'... (4000 "
         "characters)"),
        ("health_settle", "3601", "must be from 0 to 3600, got '3601'"),
        ("smoke_status", "99", "must be from 100 to 599, got '99'"),
        ("smoke_timeout", "100000", "must be from 0 to 86400, got '100000'"),
    ],
)
def test_numbers_are_ascii_digits_within_bounds(name: str, value: str, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        deploy_settings(**{name: value})
    assert caught.value.input_name == name
    assert fragment in caught.value.message
    assert caught.value.hint.startswith(f"Write a number such as `{name}: ")


def test_numbers_at_their_bounds_are_accepted() -> None:
    s = deploy_settings(health_timeout="86400", lock_timeout="0", smoke_timeout=" 0 ",
                        health_settle="3600", smoke_status="599")
    assert (s.health_timeout, s.lock_timeout, s.smoke_timeout) == (86400, 0, 0)
    assert (s.health_settle, s.smoke_status) == (3600, 599)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("https://ghcr.io", "Input 'registry': drop the scheme: use ghcr.io, not "
         "'https://ghcr.io'."),
        ("http://127.0.0.1:5000/", "Input 'registry': drop the scheme: use 127.0.0.1:5000, "
         "not 'http://127.0.0.1:5000/'."),
        ("HTTPS://GHCR.IO", "Input 'registry': drop the scheme: use ghcr.io, not "
         "'https://ghcr.io'."),
        ("ghcr.io/org", "Input 'registry': 'ghcr.io/org' is not a registry host: 'ghcr.io/org' "
         "is not a host name"),
        ("ghcr.io:99999", "Input 'registry': 'ghcr.io:99999' is not a registry host: port "
         "'99999' is not a number from 1 to 65535."),
    ],
)
def test_registry_is_a_host_never_rewritten(value: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        settings(registry=value)
    assert caught.value.message.startswith(message)


def test_registry_ipv6_host_is_accepted() -> None:
    assert settings(registry="[::1]:5000").image_name == "[::1]:5000/org/app"


@pytest.mark.parametrize("value", [
    "staging\n::stop-commands::pwned", "prod|x", "`staging`", "staging env", "-staging",
    "a" * 101, "st\u0430ging", "<b>prod</b>", "staging\r::add-mask::x",
])
def test_environment_is_a_name(value: str) -> None:
    with pytest.raises(InputError) as caught:
        deploy_settings(environment=value)
    assert caught.value.input_name == "environment"
    assert "is not an environment name" in caught.value.message


@pytest.mark.parametrize("value", ["staging", "production", "Prod-EU_1", "qa.2", "a" * 100])
def test_environment_names_accepted(value: str) -> None:
    assert deploy_settings(environment=value).environment == value


def test_production_environments_are_names() -> None:
    with pytest.raises(InputError) as caught:
        deploy_settings(production_environments="production,pr od")
    assert caught.value.input_name == "production_environments"


@pytest.mark.parametrize(("value", "fragment"), [
    ("Shop", "'Shop' is not a compose project name"),
    ("_shop", "'_shop' is not a compose project name"),
    ("-shop", "'-shop' is not a compose project name"),
    ("shop.staging", "'shop.staging' is not a compose project name"),
    ("shop staging", "'shop staging' is not a compose project name"),
    ("p" * 64, "is 64 characters long; at most 63"),
    ("p" * 300, "is 300 characters long; at most 63"),
])
def test_project_name_follows_compose(value: str, fragment: str) -> None:
    with pytest.raises(InputError) as caught:
        deploy_settings(project_name=value)
    assert caught.value.input_name == "project_name"
    assert fragment in caught.value.message


def test_project_name_accepted() -> None:
    assert deploy_settings(project_name="shop_staging-2").project_name == "shop_staging-2"
    assert deploy_settings(project_name="1" + "p" * 62).project_name == "1" + "p" * 62
    assert deploy_settings().project_name == ""


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/", "example.com/health", "//example.com/",
    "http://", "https:///path", "gopher://x", "http://exa mple.com/", "http://[::1/",
    "http://example.com:99999/", "javascript:alert(1)", "http://example.com/\x7f",
])
def test_smoke_url_is_http_with_a_host(url: str) -> None:
    with pytest.raises(InputError) as caught:
        deploy_settings(smoke_url=f"http://ok.example/\n{url}")
    assert caught.value.input_name == "smoke_url"
    assert "is not an http:// or https:// URL with a host" in caught.value.message


def test_smoke_urls_and_environment_url_accepted() -> None:
    s = deploy_settings(smoke_url="http://127.0.0.1:8080/\nhttps://[::1]/h?x=1",
                        environment_url="https://shop.example.com")
    assert s.smoke_url == ("http://127.0.0.1:8080/", "https://[::1]/h?x=1")
    assert s.environment_url == "https://shop.example.com"
    with pytest.raises(InputError) as caught:
        deploy_settings(environment_url="javascript:alert(1)")
    assert caught.value.input_name == "environment_url"


@pytest.mark.parametrize("url", ["https://ops:pw@shop.example.com/", "https://ops@shop.example.com/",
                                 "https://:pw@shop.example.com/"])
def test_an_environment_url_with_credentials_is_refused(url: str) -> None:
    """It is shown on the GitHub deployment to anyone who can read the repository."""
    with pytest.raises(InputError) as caught:
        deploy_settings(environment_url=url)
    assert caught.value.input_name == "environment_url"
    assert "carries credentials" in caught.value.message
    assert "pw" not in caught.value.message


ACTIONS = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": "/github/workspace"}


@pytest.mark.parametrize(("inputs", "name"), [
    ({"project_dir": "/etc"}, "project_dir"),
    ({"project_dir": ".."}, "project_dir"),
    ({"project_dir": "app/../../x"}, "project_dir"),
    ({"compose_file": "/etc/compose.yaml"}, "compose_file"),
    ({"compose_file": "../other/compose.yaml"}, "compose_file"),
    ({"project_dir": "deploy", "compose_file": "../../compose.yaml"}, "compose_file"),
])
def test_paths_stay_in_the_workspace_in_actions(inputs: dict[str, str], name: str) -> None:
    with pytest.raises(InputError) as caught:
        deploy_settings(ACTIONS, **inputs)
    assert caught.value.input_name == name
    assert "is outside the workspace /github/workspace" in caught.value.message


def test_paths_inside_the_workspace_or_outside_actions_are_accepted() -> None:
    s = deploy_settings(ACTIONS, project_dir="deploy/prod", compose_file="../compose.yaml")
    assert s.project_dir == "deploy/prod"
    assert deploy_settings(ACTIONS, project_dir="/github/workspace/app").project_dir
    assert deploy_settings(project_dir="/srv/app").project_dir == "/srv/app"  # a terminal
    relative = {"GITHUB_ACTIONS": "true"}  # no GITHUB_WORKSPACE: the current directory
    assert deploy_settings(relative, project_dir="app").project_dir == "app"
    with pytest.raises(InputError):
        deploy_settings(relative, project_dir="../app")
    with pytest.raises(InputError):
        deploy_settings({**ACTIONS, "GITHUB_WORKSPACE": "/github/workspace/"},
                        project_dir="/github/workspace2")


@pytest.mark.parametrize("epoch", ["\u00b2", "\u0661\u0662", "-1", "1e9", "253402300800",
                                   "9" * 5000])
def test_source_date_epoch_is_ascii_seconds(epoch: str) -> None:
    with pytest.raises(InputError) as caught:
        load_settings({**BASE, "SOURCE_DATE_EPOCH": epoch})
    assert caught.value.input_name == "SOURCE_DATE_EPOCH"
    assert "must be Unix seconds (digits 0-9, at most 253402300799)" in caught.value.message


@pytest.mark.parametrize(("inputs", "name"), [
    ({"context": "/etc"}, "context"),
    ({"context": "../sibling"}, "context"),
    ({"dockerfile": "/etc/Dockerfile"}, "dockerfile"),
    ({"context": "app", "dockerfile": "../../Dockerfile"}, "dockerfile"),
])
def test_build_paths_stay_in_the_workspace_in_actions(inputs: dict[str, str], name: str) -> None:
    with pytest.raises(InputError) as caught:
        load_settings({**BASE, **ACTIONS, **{f"INPUT_{k.upper()}": v for k, v in inputs.items()}})
    assert caught.value.input_name == name
    assert caught.value.message == (f"Input '{name}': {inputs[name]!r} is outside the "
                                    "workspace /github/workspace.")


def test_build_paths_inside_the_workspace_are_accepted() -> None:
    s = load_settings({**BASE, **ACTIONS, "INPUT_CONTEXT": "app",
                       "INPUT_DOCKERFILE": "docker/app.Dockerfile"})
    assert (s.context, s.dockerfile) == ("app", "docker/app.Dockerfile")


def test_any_input_value_is_either_accepted_or_an_input_error() -> None:
    """Seeded fuzzing: no value of any input ends in anything but an InputError."""
    rng = random.Random(11)
    alphabet = [*"abcAZ09:/@._-[]%\n\r\t |`<>#&;'\"\\", "\u0661", "\u00b2", "\uff11",
                "\u2028", "\x00", "\u00e9", "::", "##["]
    for _ in range(2000):
        spec = rng.choice(INPUTS)
        value = "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 3, 10, 70, 300])))
        env = {**BASE, "GITHUB_ACTIONS": rng.choice(["true", ""]), "GITHUB_WORKSPACE": "/ws",
               "INPUT_MODE": rng.choice(["build", "deploy", "rollback"]),
               f"INPUT_{spec.name.upper()}": value}
        with contextlib.suppress(InputError):
            load_settings(env)


def test_a_long_bad_value_is_cut_short_in_the_error() -> None:
    with pytest.raises(InputError) as caught:
        deploy_settings(environment="e" * 300 + "\n::error::x")
    assert caught.value.message == (f"Input 'environment': '{'e' * 80}'... (311 characters) "
                                    "is not an environment name.")


# -- issue 20: inputs that do something else than they say ------------------------------
@pytest.mark.parametrize("spec", INPUTS, ids=[spec.name for spec in INPUTS])
def test_every_input_has_a_length_bound(spec) -> None:  # type: ignore[no-untyped-def]
    """A 100 kB compose_env made regexes crawl for 36-111 s: no value is that long."""
    value = "a" * (spec.length_limit + 1)
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        deploy_settings(**{spec.name: value})
    assert time.monotonic() - started < 1
    assert caught.value.input_name == spec.name
    assert caught.value.message == (f"Input '{spec.name}': is {len(value)} characters long; "
                                    f"at most {spec.length_limit}.")
    assert spec.length_limit <= 65536


def test_a_compose_env_of_a_whole_env_file_fits() -> None:
    text = "\n".join(f"KEY_{n}=" + "v" * 60 for n in range(600))  # ~40 kB
    assert len(deploy_settings(compose_env=text).compose_env) == 600


@pytest.mark.parametrize("key", ["DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_TLS_VERIFY",
                                 "COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"])
def test_compose_env_cannot_steer_compose_itself(key: str) -> None:
    """A DOCKER_HOST meant for a service redirected compose itself (dockercli.py:71)."""
    with pytest.raises(InputError) as caught:
        parse_compose_env(f"PORT=8080\n{key}=tcp://10.1.2.3:2375")
    assert caught.value.input_name == "compose_env"
    assert caught.value.message.startswith(f"Input 'compose_env': line 2 sets {key}, which "
                                           "would change how docker compose itself runs")
    assert f"APP_{key}" in caught.value.hint
    assert "10.1.2.3" not in str(caught.value)


def test_compose_env_keys_that_only_contain_docker_are_fine() -> None:
    assert parse_compose_env("MY_DOCKER_HOST=x\nDOCKERFILE_NAME=y") == (
        ("MY_DOCKER_HOST", "x"), ("DOCKERFILE_NAME", "y"))


def test_a_settle_longer_than_the_timeout_is_refused() -> None:
    """It was accepted and replaced the containers before failing by construction."""
    with pytest.raises(InputError) as caught:
        deploy_settings(health_settle="60", health_timeout="30")
    assert caught.value.input_name == "health_settle"
    assert caught.value.message == ("Input 'health_settle': is 60 s, longer than "
                                    "`health_timeout` (30 s): no container could pass the "
                                    "health check.")
    assert deploy_settings(health_settle="30", health_timeout="30").health_settle == 30


def test_a_bad_timeout_is_not_blamed_on_the_settle() -> None:
    with pytest.raises(InputError) as caught:
        deploy_settings(health_settle="60", health_timeout="0")
    assert caught.value.input_name == "health_timeout"


def test_several_bad_inputs_are_one_error_listing_them_all() -> None:
    with pytest.raises(InvalidInputs) as caught:
        deploy_settings(health_timeout="x", smoke_url="ftp://x/", **{"DRY-RUN": "true"})
    assert [error.input_name for error in caught.value.errors] == [  # type: ignore[attr-defined]
        "dry_run", "health_timeout", "smoke_url"]
    assert caught.value.title == "Invalid inputs: dry_run, health_timeout, smoke_url"
    assert str(caught.value).startswith("3 inputs are invalid:\n- Input 'dry_run': is spelled")


def test_a_bad_mode_is_reported_alone() -> None:
    """What else is required or unused depends on the mode."""
    with pytest.raises(InputError) as caught:
        load_settings({"INPUT_MODE": "bogus", "INPUT_HEALTH_TIMEOUT": "x"})
    assert caught.value.input_name == "mode"


@pytest.mark.parametrize(("mode", "inputs", "names"), [
    ("deploy", {}, ["image_repo", "environment", "image_tag"]),
    ("rollback", {}, ["image_repo", "environment"]),
    ("deploy", {"environment": "staging\n::x"}, ["image_repo", "environment", "image_tag"]),
    ("deploy", {"image_tag": "a b"}, ["image_repo", "environment", "image_tag"]),
    ("build", {}, ["image_repo"]),
])
def test_the_gate_checks_what_the_mode_needs(mode: str, inputs: dict[str, str],
                                             names: list[str]) -> None:
    env = {"INPUT_MODE": mode, **{f"INPUT_{k.upper()}": v for k, v in inputs.items()}}
    with pytest.raises(InputError) as caught:
        load_settings(env, gate=True)
    assert caught.value.input_name == ", ".join(names)


def test_without_the_gate_the_deploy_target_is_not_required() -> None:
    """`deploykit history`, `resolve` and the tests' settings: no environment needed."""
    assert load_settings({**BASE, "INPUT_MODE": "deploy"}).environment == ""


def test_unused_inputs_are_those_set_that_the_mode_never_reads() -> None:
    env = {"INPUT_MODE": "build", "INPUT_SMOKE_URL": "http://x/", "INPUT_ENVIRONMENT": "st",
           "INPUT_HEALTH_TIMEOUT": "120", "INPUT_PLATFORMS": "linux/amd64",
           "INPUT_LOCK_TIMEOUT": " "}
    assert unused_inputs(env, None, "build") == ("environment", "smoke_url")
    assert unused_inputs(env, {"force_redeploy": "true"}, "build") == (
        "environment", "force_redeploy", "smoke_url")
    assert unused_inputs(env, None, "deploy") == ("platforms",)
