"""deploykit.github over the REST shapes PyGithub really calls (``responses``, no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import responses
from responses import matchers

from deploykit.changelog import previous_release_tag, release_body, release_tag, render_changelog
from deploykit.errors import GitHubError, InputError
from deploykit.github import GitHubRecorder, deployment_ref, environment_url_for, summary_links
from deploykit.github_records import DeploymentRecord, ReleaseRecord
from deploykit.settings import Settings, load_settings
from tests.conftest import CapturedActions

API = "https://api.github.com:443/repos/octo/app"
RUN_URL = "https://github.com/octo/app/actions/runs/4242"
SHA = "3f2c9a1b7d4e5f60718293a4b5c6d7e8f9012345"
DIGEST = "sha256:" + "a" * 64
OLD_DIGEST = "sha256:" + "b" * 64
OLDER_DIGEST = "sha256:" + "c" * 64
IMAGE = "ghcr.io/octo/app"
TOKEN = "ghs_unit_test_token_123"
NOT_ACCESSIBLE = {
    "message": "Resource not accessible by integration",
    "documentation_url": "https://docs.github.com/rest/deployments/deployments",
}


def make_settings(**inputs: str) -> Settings:
    env = {
        "INPUT_MODE": "deploy",
        "INPUT_GITHUB_TOKEN": TOKEN,
        "GITHUB_REPOSITORY": "octo/app",
        "GITHUB_RUN_ID": "4242",
        "GITHUB_SHA": SHA,
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_API_URL": "https://api.github.com",
    }
    env.update({f"INPUT_{name.upper()}": value for name, value in inputs.items()})
    return load_settings(env)


@dataclass
class Harness:
    recorder: GitHubRecorder
    actions: CapturedActions
    sleeps: list[float] = field(default_factory=list)

    def warnings(self) -> list[str]:
        return [line for line in self.actions.out.getvalue().splitlines()
                if line.startswith("::warning")]

    def infos(self) -> list[str]:
        return [line for line in self.actions.out.getvalue().splitlines()
                if not line.startswith("::")]


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


@pytest.fixture
def make_harness(make_actions: Callable[..., CapturedActions]) -> Callable[..., Harness]:
    def factory(**inputs: str) -> Harness:
        actions = make_actions()
        sleeps: list[float] = []
        recorder = GitHubRecorder.from_settings(
            make_settings(**inputs), actions, sleep=sleeps.append,
            new_request_id=lambda: "req-1", pace_requests=False,
        )
        assert recorder is not None
        return Harness(recorder, actions, sleeps)

    return factory


def body(call: Any) -> Any:
    return json.loads(call.request.body)


def requests_made(rsps: responses.RequestsMock) -> list[str]:
    return [f"{call.request.method} {call.request.url}" for call in rsps.calls]


def deployment_json(number: int, environment: str, payload: Any) -> dict[str, Any]:
    return {
        "url": f"{API.replace(':443', '')}/deployments/{number}",
        "id": number, "node_id": f"DE_{number}", "sha": SHA, "ref": "v1.2.0", "task": "deploy",
        "payload": payload, "original_environment": environment, "environment": environment,
        "description": "", "created_at": "2024-05-01T10:00:00Z",
        "updated_at": "2024-05-01T10:00:00Z",
        "statuses_url": f"{API.replace(':443', '')}/deployments/{number}/statuses",
        "repository_url": API.replace(":443", ""),
        "transient_environment": False, "production_environment": True,
    }


def status_json(number: int, state: str) -> dict[str, Any]:
    return {"url": f"{API}/deployments/{number}/statuses/{number}00", "id": number * 100,
            "state": state, "description": "", "environment": "production",
            "created_at": "2024-05-01T10:00:00Z"}


def payload(digest: str, tag: str = "v1.2.0") -> dict[str, str]:
    return {"image": IMAGE, "tag": tag, "digest": digest, "run_url": RUN_URL,
            "request_id": "older"}


def start(harness: Harness, environment: str = "production") -> DeploymentRecord | None:
    return harness.recorder.start_deployment(
        environment=environment, ref="v1.2.0", image=IMAGE, tag="v1.2.0", digest=DIGEST,
        is_production=environment == "production", description="deploykit: v1.2.0",
    )


# -- from_settings -----------------------------------------------------------------------
def test_no_recorder_without_token_repository_or_on_dry_run(
    make_actions: Callable[..., CapturedActions],
) -> None:
    actions = make_actions()
    assert GitHubRecorder.from_settings(make_settings(github_token=""), actions) is None
    assert GitHubRecorder.from_settings(make_settings(dry_run="true"), actions) is None
    no_repo = load_settings({"INPUT_MODE": "deploy", "INPUT_GITHUB_TOKEN": TOKEN,
                             "INPUT_IMAGE_REPO": "octo/app"})
    assert GitHubRecorder.from_settings(no_repo, actions) is None
    assert GitHubRecorder.from_settings(make_settings(), actions) is not None



PYGITHUB_LOADED = """
import sys
from deploykit.actions import Actions
from deploykit.github import GitHubRecorder
from deploykit.settings import load_settings
import deploykit.build, deploykit.deploy.procedure
env = {"INPUT_MODE": "deploy", "GITHUB_REPOSITORY": "octo/app", "INPUT_GITHUB_TOKEN": sys.argv[1]}
recorder = GitHubRecorder.from_settings(load_settings(env), Actions(env))
print(type(recorder).__name__, "github" in sys.modules, "deploykit.github_api" in sys.modules)
"""


@pytest.mark.parametrize(("token", "printed"), [
    ("", "NoneType False False"),
    (TOKEN, "PyGithubRecorder True True"),
])
def test_pygithub_is_imported_only_when_a_recorder_is_made(token: str, printed: str) -> None:
    result = subprocess.run([sys.executable, "-c", PYGITHUB_LOADED, token], check=True,
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.splitlines()[-1] == printed

# -- deployments -----------------------------------------------------------------------
def test_start_production_deployment_posts_deployment_then_in_progress(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.post(f"{API}/deployments", status=201,
              json=deployment_json(12, "production", payload(DIGEST) | {"request_id": "req-1"}))
    rsps.post(f"{API}/deployments/12/statuses", status=201, json=status_json(12, "in_progress"))

    record = start(harness)

    assert record == DeploymentRecord(
        id=12, environment="production", ref="v1.2.0", digest=DIGEST,
        url="https://api.github.com/repos/octo/app/deployments/12",
        html_url="https://github.com/octo/app/deployments/production",
    )
    assert body(rsps.calls[0]) == {
        "ref": "v1.2.0", "auto_merge": False, "required_contexts": [],
        "payload": {"image": IMAGE, "tag": "v1.2.0", "digest": DIGEST, "run_url": RUN_URL,
                    "request_id": "req-1"},
        "environment": "production", "description": "deploykit: v1.2.0",
        "transient_environment": False, "production_environment": True,
    }
    assert body(rsps.calls[1]) == {"state": "in_progress", "description": "deploykit: v1.2.0",
                                   "log_url": RUN_URL}
    assert rsps.calls[0].request.headers["Authorization"] == f"token {TOKEN}"
    assert harness.warnings() == []


def test_staging_deployment_is_transient_and_not_production(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.post(f"{API}/deployments", status=201, json=deployment_json(13, "staging", {}))
    rsps.post(f"{API}/deployments/13/statuses", status=201, json=status_json(13, "in_progress"))

    record = start(harness, "staging")

    assert record is not None and record.html_url == "https://github.com/octo/app/deployments/staging"
    sent = body(rsps.calls[0])
    assert (sent["transient_environment"], sent["production_environment"]) == (True, False)


def test_success_marks_earlier_successful_deployments_inactive(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    record = DeploymentRecord(12, "production", "v1.2.0", DIGEST,
                              "https://api.github.com/repos/octo/app/deployments/12",
                              "https://github.com/octo/app/deployments/production")
    rsps.post(f"{API}/deployments/12/statuses", status=201, json=status_json(12, "success"))
    rsps.get(f"{API}/deployments", match=[matchers.query_param_matcher(
        {"environment": "production"})], json=[
        deployment_json(14, "production", payload(DIGEST)),  # a newer one: left alone
        deployment_json(12, "production", payload(DIGEST)),  # this one
        deployment_json(11, "production", payload(OLD_DIGEST)),
        deployment_json(10, "production", payload(OLDER_DIGEST)),
        deployment_json(9, "production", payload(OLDER_DIGEST)),
        deployment_json(8, "production", payload(OLDER_DIGEST)),
    ])
    rsps.get(f"{API}/deployments/11/statuses", json=[status_json(11, "success"),
                                                     status_json(11, "in_progress")])
    rsps.get(f"{API}/deployments/10/statuses", json=[status_json(10, "failure")])
    rsps.get(f"{API}/deployments/9/statuses", json=[status_json(9, "inactive")])
    rsps.post(f"{API}/deployments/11/statuses", status=201, json=status_json(11, "inactive"))

    harness.recorder.finish_deployment(record, success=True,
                                       environment_url="https://app.example.com",
                                       description="Deployed v1.2.0")

    assert requests_made(rsps) == [
        f"POST {API}/deployments/12/statuses",
        f"GET {API}/deployments?environment=production",
        f"GET {API}/deployments/11/statuses",
        f"POST {API}/deployments/11/statuses",
        f"GET {API}/deployments/10/statuses",
        f"GET {API}/deployments/9/statuses",
    ]
    assert body(rsps.calls[0]) == {"state": "success", "description": "Deployed v1.2.0",
                                   "log_url": RUN_URL,
                                   "environment_url": "https://app.example.com"}
    assert body(rsps.calls[3]) == {"state": "inactive",
                                   "description": "Superseded by deployment #12.",
                                   "log_url": RUN_URL}
    assert harness.warnings() == []


def test_failure_posts_failure_and_marks_nothing(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    record = DeploymentRecord(12, "staging", SHA, DIGEST,
                              "https://api.github.com/repos/octo/app/deployments/12", "")
    rsps.post(f"{API}/deployments/12/statuses", status=201, json=status_json(12, "failure"))

    harness.recorder.finish_deployment(record, success=False, environment_url="",
                                       description="Health check failed: web unhealthy " * 6)

    assert requests_made(rsps) == [f"POST {API}/deployments/12/statuses"]
    sent = body(rsps.calls[0])
    assert sent["state"] == "failure" and sent["log_url"] == RUN_URL
    assert "environment_url" not in sent
    assert len(sent["description"]) == 140 and sent["description"].endswith("…")


def test_finish_without_record_calls_nothing(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    make_harness().recorder.finish_deployment(None, success=True, environment_url="",
                                              description="")
    assert len(rsps.calls) == 0


def test_rollback_finds_previous_successful_digest_in_payloads(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.get(f"{API}/deployments", match=[matchers.query_param_matcher(
        {"environment": "production"})], json=[
        deployment_json(15, "production", payload(DIGEST)),  # the one being replaced
        deployment_json(14, "production", "not a deploykit payload"),
        deployment_json(13, "production", {}),  # made by a job's `environment:`
        deployment_json(12, "production", payload(OLD_DIGEST, "v1.1.1")),
        deployment_json(11, "production", payload(OLDER_DIGEST, "v1.1.0")),
    ])
    rsps.get(f"{API}/deployments/12/statuses", json=[status_json(12, "failure")])
    rsps.get(f"{API}/deployments/11/statuses", json=[status_json(11, "inactive")])

    previous = harness.recorder.previous_successful_deployment("production",
                                                               exclude_digest=DIGEST)

    assert previous is not None
    assert (previous.id, previous.tag, previous.digest, previous.state) == (
        11, "v1.1.0", OLDER_DIGEST, "inactive")
    assert previous.image == IMAGE


def test_previous_successful_digest_is_none_without_success(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.get(f"{API}/deployments", json=[deployment_json(3, "staging", payload(OLD_DIGEST))])
    rsps.get(f"{API}/deployments/3/statuses", json=[status_json(3, "error")])

    assert harness.recorder.previous_successful_digest("staging") is None
    assert harness.warnings() == []


# -- permissions and failures ------------------------------------------------------------
def test_403_on_deployment_is_a_warning_naming_the_permission(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.post(f"{API}/deployments", status=403, json=NOT_ACCESSIBLE)

    assert start(harness) is None

    assert harness.warnings() == [
        "::warning title=GitHub record skipped::Could not create the GitHub deployment of "
        "`production`: 403 Resource not accessible by integration. Give the job "
        "`permissions: deployments: write` (or use a token that has it) and check that it "
        "can see `octo/app`."
    ]
    assert harness.sleeps == []
    assert len(rsps.calls) == 1


def test_github_records_required_turns_the_warning_into_an_error(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness(github_records="required")
    rsps.post(f"{API}/deployments", status=403, json=NOT_ACCESSIBLE)

    with pytest.raises(GitHubError) as caught:
        start(harness)

    assert caught.value.message == ("Could not create the GitHub deployment of `production`: "
                                    "403 Resource not accessible by integration.")
    assert caught.value.hint == ("Give the job `permissions: deployments: write` (or use a "
                                 "token that has it) and check that it can see `octo/app`.")
    assert harness.warnings() == []


def test_missing_ref_gets_its_own_hint(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.post(f"{API}/deployments", status=422, json={"message": "No ref found for: v1.2.0"})

    assert start(harness) is None
    assert harness.warnings() == [
        "::warning title=GitHub record skipped::Could not create the GitHub deployment of "
        "`production`: 422 No ref found for: v1.2.0. A deployment needs a ref that exists in "
        "the repository: a pushed `vX.Y.Z` tag or a commit SHA."
    ]


def test_502_then_success_is_retried_after_looking_for_a_lost_deployment(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.post(f"{API}/deployments", status=502, json={"message": "Server Error"})
    rsps.get(f"{API}/deployments", json=[deployment_json(7, "production", payload(DIGEST))])
    rsps.post(f"{API}/deployments", status=201, json=deployment_json(12, "production", {}))
    rsps.post(f"{API}/deployments/12/statuses", status=201, json=status_json(12, "in_progress"))

    record = start(harness)

    assert record is not None and record.id == 12
    assert requests_made(rsps) == [
        f"POST {API}/deployments",
        f"GET {API}/deployments?environment=production",
        f"POST {API}/deployments",
        f"POST {API}/deployments/12/statuses",
    ]
    assert body(rsps.calls[0]) == body(rsps.calls[2])
    assert harness.sleeps == [1.0]
    assert harness.infos() == [
        "GitHub API: 502 Server Error; retrying in 1 s (attempt 2 of 4)."
    ]
    assert harness.warnings() == []


def test_502_that_created_the_deployment_is_not_posted_twice(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    created = deployment_json(12, "production", payload(DIGEST) | {"request_id": "req-1"})
    rsps.post(f"{API}/deployments", status=502, json={"message": "Server Error"})
    rsps.get(f"{API}/deployments", json=[created])
    rsps.post(f"{API}/deployments/12/statuses", status=201, json=status_json(12, "in_progress"))

    record = start(harness)

    assert record is not None and record.id == 12
    assert [call.request.method for call in rsps.calls] == ["POST", "GET", "POST"]
    assert rsps.calls[2].request.url == f"{API}/deployments/12/statuses"


def test_server_errors_give_up_after_four_attempts_with_backoff(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.get(f"{API}/deployments", status=503, json={"message": "Service Unavailable"})

    assert harness.recorder.previous_successful_digest("staging") is None

    assert len(rsps.calls) == 4
    assert harness.sleeps == [1.0, 2.0, 4.0]
    assert harness.warnings() == [
        "::warning title=GitHub record skipped::Could not read the GitHub deployments of "
        "`staging`: 503 Service Unavailable. GitHub (https://api.github.com) failed 4 times; "
        "re-run the job to record it. On GitHub Enterprise Server, GITHUB_API_URL must be "
        "`https://HOST/api/v3`."
    ]


def test_secondary_rate_limit_waits_retry_after_then_succeeds(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.post(f"{API}/deployments/12/statuses", status=403, headers={"Retry-After": "7"},
              json={"message": "You have exceeded a secondary rate limit. Please wait a few "
                    "minutes before you try again."})
    rsps.post(f"{API}/deployments/12/statuses", status=201, json=status_json(12, "failure"))
    record = DeploymentRecord(12, "staging", SHA, DIGEST,
                              "https://api.github.com/repos/octo/app/deployments/12", "")

    harness.recorder.finish_deployment(record, success=False, environment_url="",
                                       description="failed")

    assert harness.sleeps == [7.0]
    assert len(rsps.calls) == 2
    assert harness.warnings() == []


def test_primary_rate_limit_far_away_is_not_waited_for(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.get(f"{API}/deployments", status=403,
             headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "4102444800"},
             json={"message": "API rate limit exceeded for installation ID 1."})

    assert harness.recorder.previous_successful_digest("production") is None

    assert harness.sleeps == []
    assert harness.warnings() == [
        "::warning title=GitHub record skipped::Could not read the GitHub deployments of "
        "`production`: 403 API rate limit exceeded for installation ID 1. GitHub's API rate "
        "limit was reached; re-run the job later to record it."
    ]


def test_github_enterprise_api_url_is_used(
    rsps: responses.RequestsMock, make_actions: Callable[..., CapturedActions],
) -> None:
    settings = load_settings({"INPUT_MODE": "deploy", "INPUT_GITHUB_TOKEN": TOKEN,
                              "GITHUB_REPOSITORY": "octo/app",
                              "GITHUB_SERVER_URL": "https://ghe.example.com",
                              "GITHUB_API_URL": "https://ghe.example.com/api/v3"})
    recorder = GitHubRecorder.from_settings(settings, make_actions(), pace_requests=False)
    assert recorder is not None
    rsps.get("https://ghe.example.com:443/api/v3/repos/octo/app/deployments", json=[])

    assert recorder.previous_successful_digest("staging") is None
    assert len(rsps.calls) == 1


# -- releases -------------------------------------------------------------------------------
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
    "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}
FIXTURE_COMMITS_BEFORE = ["chore: initial commit", "feat: first feature"]
FIXTURE_COMMITS_AFTER = [
    "feat(api): add health endpoint",
    "fix: keep the lock when the smoke test fails\n\nIt was released too early.",
    "docs: explain rollback",
    "Merge pull request #7 from octo/rollback-docs\n\ndocs: explain rollback",
    "feat!: read settings from deploykit.toml\n\nBREAKING CHANGE: the .env file is gone.",
    "Tidy the README",
]


@dataclass
class FixtureRepo:
    head: str
    previous_tag: str
    messages: list[str]  # oldest first, as the compare API lists them
    shas: list[str]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


@pytest.fixture
def fixture_repo(tmp_path: Path) -> FixtureRepo:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=release")
    for message in FIXTURE_COMMITS_BEFORE:
        git(repo, "commit", "--quiet", "--allow-empty", "-m", message)
    git(repo, "tag", "-a", "v1.0.0", "-m", "v1.0.0")
    for message in FIXTURE_COMMITS_AFTER:
        git(repo, "commit", "--quiet", "--allow-empty", "-m", message)
    log = git(repo, "log", "--reverse", "--format=%H%x1f%B%x1e", "v1.0.0..HEAD")
    records = [entry.strip("\n").split("\x1f", 1) for entry in log.split("\x1e") if entry.strip()]
    return FixtureRepo(head=git(repo, "rev-parse", "HEAD").strip(), previous_tag="v1.0.0",
                       messages=[message.strip() for _, message in records],
                       shas=[sha for sha, _ in records])


def compare_json(fixture: FixtureRepo) -> dict[str, Any]:
    commits = [{"sha": sha, "url": f"{API}/commits/{sha}",
                "html_url": f"https://github.com/octo/app/commit/{sha}",
                "commit": {"message": message, "url": f"{API}/git/commits/{sha}"}}
               for sha, message in zip(fixture.shas, fixture.messages, strict=True)]
    return {"url": f"{API}/compare/v1.0.0...{fixture.head}", "status": "ahead",
            "ahead_by": len(commits), "behind_by": 0, "total_commits": len(commits),
            "commits": commits, "files": []}


def tags_json(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "commit": {"sha": "0" * 40, "url": f"{API}/commits/{'0' * 40}"}}
            for name in names]


def release_json(number: int, tag: str) -> dict[str, Any]:
    return {"url": f"https://api.github.com/repos/octo/app/releases/{number}", "id": number,
            "html_url": f"https://github.com/octo/app/releases/tag/{tag}", "tag_name": tag,
            "name": tag, "draft": False, "prerelease": False}


PLATFORMS = {"linux/arm64": "sha256:" + "2" * 64, "linux/amd64": "sha256:" + "1" * 64}
EXPECTED_CHANGELOG = """\
### Features

- **api:** add health endpoint
- **BREAKING:** read settings from deploykit.toml
  - the .env file is gone.

### Fixes

- keep the lock when the smoke test fails

### Other changes

- docs: explain rollback
- Tidy the README"""


def publish(harness: Harness, fixture: FixtureRepo, *, create_tag: bool = True,
            version: str = "1.1.0", prerelease: bool = False) -> ReleaseRecord | None:
    return harness.recorder.publish_release(
        version=version, sha=fixture.head, digest=DIGEST, image=IMAGE, platforms=PLATFORMS,
        prerelease=prerelease, create_tag=create_tag,
    )


def test_release_from_the_release_branch_creates_tag_and_release_with_changelog(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
    fixture_repo: FixtureRepo,
) -> None:
    harness = make_harness(mode="build")
    head = fixture_repo.head
    rsps.get(f"{API}/git/ref/tags/v1.1.0", status=404, json={"message": "Not Found"})
    rsps.post(f"{API}/git/tags", status=201, json={
        "sha": "9" * 40, "tag": "v1.1.0", "message": "v1.1.0",
        "object": {"type": "commit", "sha": head, "url": f"{API}/git/commits/{head}"}})
    rsps.post(f"{API}/git/refs", status=201, json={
        "ref": "refs/tags/v1.1.0", "url": f"{API}/git/refs/tags/v1.1.0",
        "object": {"type": "tag", "sha": "9" * 40, "url": f"{API}/git/tags/{'9' * 40}"}})
    rsps.get(f"{API}/tags", json=tags_json("v1.1.0", "v2.0.0-beta.1", "v1.1.0-rc.1",
                                           "v1.0.0", "v0.9.0", "nightly"))
    rsps.get(f"{API}/compare/v1.0.0...{head}", json=compare_json(fixture_repo))
    rsps.get(f"{API}/releases/tags/v1.1.0", status=404, json={"message": "Not Found"})
    rsps.post(f"{API}/releases", status=201, json=release_json(77, "v1.1.0"))

    record = publish(harness, fixture_repo)

    assert render_changelog(fixture_repo.messages) == EXPECTED_CHANGELOG
    assert record == ReleaseRecord(
        tag="v1.1.0", id=77, url="https://api.github.com/repos/octo/app/releases/77",
        html_url="https://github.com/octo/app/releases/tag/v1.1.0", created=True,
        previous_tag="v1.0.0", changelog=EXPECTED_CHANGELOG,
    )
    assert body(rsps.calls[1]) == {"tag": "v1.1.0", "object": head, "type": "commit",
                                   "message": f"v1.1.0\n\nImage: {IMAGE}@{DIGEST}\n"}
    assert body(rsps.calls[2]) == {"ref": "refs/tags/v1.1.0", "sha": "9" * 40}
    assert body(rsps.calls[6]) == {
        "tag_name": "v1.1.0", "name": "v1.1.0", "draft": False, "prerelease": False,
        "generate_release_notes": False, "make_latest": "legacy",
        "body": (
            "## Changes since v1.0.0\n\n" + EXPECTED_CHANGELOG + "\n\n"
            "Full diff: [v1.0.0...v1.1.0](https://github.com/octo/app/compare/v1.0.0...v1.1.0)"
            "\n\n## Image\n\n```sh\n"
            f"docker pull {IMAGE}@{DIGEST}\n```\n\n"
            f"- Tag: `{IMAGE}:v1.1.0`\n- Digest: `{DIGEST}`\n\n"
            "| Platform | Manifest digest |\n| --- | --- |\n"
            f"| linux/amd64 | `{PLATFORMS['linux/amd64']}` |\n"
            f"| linux/arm64 | `{PLATFORMS['linux/arm64']}` |\n"
        ),
    }
    assert harness.warnings() == []


def test_release_on_a_pushed_tag_updates_the_existing_prerelease(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
    fixture_repo: FixtureRepo,
) -> None:
    harness = make_harness(mode="build")
    head = fixture_repo.head
    rsps.get(f"{API}/git/ref/tags/v1.1.0-rc.1", json={
        "ref": "refs/tags/v1.1.0-rc.1", "url": f"{API}/git/refs/tags/v1.1.0-rc.1",
        "object": {"type": "tag", "sha": "8" * 40, "url": f"{API}/git/tags/{'8' * 40}"}})
    rsps.get(f"{API}/git/tags/{'8' * 40}", json={
        "sha": "8" * 40, "tag": "v1.1.0-rc.1", "message": "rc",
        "object": {"type": "commit", "sha": head, "url": f"{API}/git/commits/{head}"}})
    rsps.get(f"{API}/tags", json=tags_json("v1.1.0-rc.1", "v1.0.0"))
    rsps.get(f"{API}/compare/v1.0.0...{head}", json=compare_json(fixture_repo))
    rsps.get(f"{API}/releases/tags/v1.1.0-rc.1", json=release_json(78, "v1.1.0-rc.1"))
    rsps.patch("https://api.github.com:443/repos/octo/app/releases/78",
               json=release_json(78, "v1.1.0-rc.1"))

    record = publish(harness, fixture_repo, create_tag=False, version="v1.1.0-rc.1",
                     prerelease=True)

    assert record is not None and (record.created, record.id) == (False, 78)
    sent = body(rsps.calls[-1])
    assert {key: sent[key] for key in ("tag_name", "name", "draft", "prerelease",
                                       "make_latest")} == {
        "tag_name": "v1.1.0-rc.1", "name": "v1.1.0-rc.1", "draft": False, "prerelease": True,
        "make_latest": "false"}
    assert sent["body"].startswith("> **Pre-release.** v1.1.0-rc.1 is not a stable version.\n\n"
                                   "## Changes since v1.0.0\n\n### Features\n\n")


def test_release_tag_on_another_commit_is_refused(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
    fixture_repo: FixtureRepo,
) -> None:
    harness = make_harness(mode="build")
    rsps.get(f"{API}/git/ref/tags/v1.1.0", json={
        "ref": "refs/tags/v1.1.0", "url": f"{API}/git/refs/tags/v1.1.0",
        "object": {"type": "commit", "sha": "e" * 40, "url": f"{API}/git/commits/{'e' * 40}"}})

    assert publish(harness, fixture_repo) is None
    assert harness.warnings() == [
        "::warning title=GitHub record skipped::Could not publish the GitHub release v1.1.0: "
        f"the git tag v1.1.0 points to eeeeeeeeeeee, not to {fixture_repo.head[:12]}. "
        "Versions are write-once: release this commit under a new `version`, or delete the "
        "wrong tag first if it was a mistake."
    ]


def test_release_403_is_a_warning_naming_contents_write(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
    fixture_repo: FixtureRepo,
) -> None:
    harness = make_harness(mode="build")
    rsps.get(f"{API}/git/ref/tags/v1.1.0", status=404, json={"message": "Not Found"})
    rsps.post(f"{API}/git/tags", status=403, json=NOT_ACCESSIBLE)

    assert publish(harness, fixture_repo) is None
    assert harness.warnings() == [
        "::warning title=GitHub record skipped::Could not publish the GitHub release v1.1.0: "
        "403 Resource not accessible by integration. Give the job `permissions: contents: "
        "write` (or use a token that has it) and check that it can see `octo/app`."
    ]


def test_first_release_has_no_changelog_to_compare(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
    fixture_repo: FixtureRepo,
) -> None:
    harness = make_harness(mode="build")
    head = fixture_repo.head
    rsps.get(f"{API}/git/ref/tags/v1.0.0", json={
        "ref": "refs/tags/v1.0.0", "url": f"{API}/git/refs/tags/v1.0.0",
        "object": {"type": "commit", "sha": head, "url": f"{API}/git/commits/{head}"}})
    rsps.get(f"{API}/tags", json=tags_json("v1.0.0"))
    rsps.get(f"{API}/releases/tags/v1.0.0", status=404, json={"message": "Not Found"})
    rsps.post(f"{API}/releases", status=201, json=release_json(1, "v1.0.0"))

    record = publish(harness, fixture_repo, version="1.0.0")

    assert record is not None and record.previous_tag is None
    assert body(rsps.calls[-1])["body"].startswith(
        "## Changes\n\nFirst release: there is no earlier `vX.Y.Z` tag.\n\n## Image\n\n")


def test_tag_created_by_a_concurrent_run_is_accepted_when_it_is_ours(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
    fixture_repo: FixtureRepo,
) -> None:
    harness = make_harness(mode="build")
    head = fixture_repo.head
    rsps.get(f"{API}/git/ref/tags/v1.0.0", status=404, json={"message": "Not Found"})
    rsps.post(f"{API}/git/tags", status=201, json={
        "sha": "9" * 40, "tag": "v1.0.0", "message": "v1.0.0",
        "object": {"type": "commit", "sha": head, "url": f"{API}/git/commits/{head}"}})
    rsps.post(f"{API}/git/refs", status=422, json={"message": "Reference already exists"})
    rsps.get(f"{API}/git/ref/tags/v1.0.0", json={
        "ref": "refs/tags/v1.0.0", "url": f"{API}/git/refs/tags/v1.0.0",
        "object": {"type": "commit", "sha": head, "url": f"{API}/git/commits/{head}"}})
    rsps.get(f"{API}/tags", json=tags_json("v1.0.0"))
    rsps.get(f"{API}/releases/tags/v1.0.0", json=release_json(1, "v1.0.0"))
    rsps.patch("https://api.github.com:443/repos/octo/app/releases/1",
               json=release_json(1, "v1.0.0"))

    assert publish(harness, fixture_repo, version="1.0.0") is not None
    assert harness.warnings() == []


def test_release_for_a_deployed_version_links_it_and_is_quiet_when_missing(
    rsps: responses.RequestsMock, make_harness: Callable[..., Harness],
) -> None:
    harness = make_harness()
    rsps.get(f"{API}/releases/tags/v1.2.0", json=release_json(9, "v1.2.0"))
    rsps.get(f"{API}/releases/tags/v1.3.0", status=404, json={"message": "Not Found"})

    assert harness.recorder.release_for("v1.2.0") == ReleaseRecord(
        tag="v1.2.0", id=9, url="https://api.github.com/repos/octo/app/releases/9",
        html_url="https://github.com/octo/app/releases/tag/v1.2.0", created=False,
        previous_tag=None, changelog="")
    assert harness.recorder.release_for("v1.3.0") is None
    assert harness.recorder.release_for("staging-latest") is None
    assert harness.recorder.release_for(DIGEST) is None
    assert len(rsps.calls) == 2
    assert harness.warnings() == []


# -- pure functions --------------------------------------------------------------------------
def test_render_changelog_without_conventional_commits_is_one_list() -> None:
    assert render_changelog(["Add login page", "Fix typo\n\nbody", "", "Merge branch 'x'"]) == (
        "### Changes\n\n- Add login page\n- Fix typo"
    )


def test_render_changelog_flags_breaking_changes_in_every_group() -> None:
    assert render_changelog([
        "fix(db)!: drop the legacy column",
        "refactor: new config loader\n\nBREAKING-CHANGE: CONFIG_PATH is ignored",
        "Feat(ui): dark mode",
    ]) == (
        "### Features\n\n- **ui:** dark mode\n\n"
        "### Fixes\n\n- **BREAKING:** **db:** drop the legacy column\n\n"
        "### Other changes\n\n- **BREAKING:** refactor: new config loader\n"
        "  - CONFIG_PATH is ignored"
    )


def test_render_changelog_of_nothing() -> None:
    assert render_changelog([]) == "No changes."
    assert render_changelog(["Merge pull request #1 from a/b"]) == "No changes."


@pytest.mark.parametrize(("tags", "tag", "expected"), [
    (["v1.0.0", "v1.2.0", "v1.1.9", "v2.0.0"], "v1.2.0", "v1.1.9"),
    (["v1.1.0-rc.2", "v1.0.3", "v1.1.0-rc.1"], "v1.1.0", "v1.0.3"),
    (["v1.1.0-rc.1", "v1.0.3"], "v1.1.0-rc.2", "v1.1.0-rc.1"),
    (["1.0.0", "v01.0.0", "latest", "v1.3.0"], "v1.2.0", None),
    ([], "v0.1.0", None),
])
def test_previous_release_tag(tags: list[str], tag: str, expected: str | None) -> None:
    assert previous_release_tag(tags, tag) == expected


def test_release_tag_normalises_and_validates() -> None:
    assert release_tag("1.4.2") == "v1.4.2"
    assert release_tag(" v1.4.2-rc.1 ") == "v1.4.2-rc.1"
    with pytest.raises(InputError) as caught:
        release_tag("1.4")
    assert str(caught.value) == ("Input 'version': '1.4' is not a version X.Y.Z.\n"
                                 "Hint: Write e.g. `version: 1.4.2` (or `v1.4.2`).")


def test_release_body_without_platforms_or_previous_tag() -> None:
    assert release_body(tag="v0.1.0", changelog="", image=IMAGE, digest=DIGEST, platforms={},
                        prerelease=False, previous_tag=None) == (
        "## Changes\n\nFirst release: there is no earlier `vX.Y.Z` tag.\n\n"
        f"## Image\n\n```sh\ndocker pull {IMAGE}@{DIGEST}\n```\n\n"
        f"- Tag: `{IMAGE}:v0.1.0`\n- Digest: `{DIGEST}`\n"
    )


def test_summary_links() -> None:
    deployment = DeploymentRecord(12, "production", "v1.2.0", DIGEST, "api",
                                  "https://github.com/octo/app/deployments/production")
    release = ReleaseRecord("v1.2.0", 5, "api", "https://github.com/octo/app/releases/tag/v1.2.0",
                            True, "v1.1.0", "")
    assert summary_links(deployment=deployment, release=release) == (
        "- GitHub deployment: [#12 to `production`]"
        "(https://github.com/octo/app/deployments/production)\n"
        "- GitHub release: [v1.2.0](https://github.com/octo/app/releases/tag/v1.2.0)"
    )
    assert summary_links() == ""


def test_glue_environment_url_and_deployment_ref() -> None:
    settings = make_settings(smoke_url="https://a.example.com/health\nhttps://b.example.com")
    assert environment_url_for(settings) == "https://a.example.com/health"
    assert environment_url_for(make_settings(environment_url="https://app.example.com",
                                             smoke_url="https://a.example.com")) == (
        "https://app.example.com")
    assert environment_url_for(make_settings()) == ""
    assert environment_url_for(make_settings(  # the credentials are the smoke request's only
        smoke_url="https://smoke:Sm0ke-PW@a.example.com:8443/health")) == (
        "https://a.example.com:8443/health")
    assert deployment_ref(settings, "v1.2.0") == "v1.2.0"
    assert deployment_ref(settings, "staging-latest") == SHA
    assert deployment_ref(settings, "v1.2.0", revision="abc123") == "abc123"
