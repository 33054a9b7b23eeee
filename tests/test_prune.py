"""Pruning old images after a verified deploy: the choice (pure), the engine calls (a fake
API), and when a deploy prunes at all (the deploy fakes of tests/test_deploy.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import docker.errors
import pytest

import deploykit.prune as prune_module
from deploykit.actions import Actions
from deploykit.errors import InputError
from deploykit.history import HistoryEntry, labels_for_stack
from deploykit.prune import (
    LocalImage,
    PruneResult,
    plan_prune,
    prune_after_deploy,
    prune_images,
    releases_to_keep,
)
from deploykit.settings import load_settings
from tests.test_deploy import D1, D2, NAME, World, run, world  # noqa: F401 (fixtures)

A, B, C, E, F = ("sha256:" + c * 64 for c in "abcef")


def entry(digest: str, image: str = NAME, status: str = "deployed") -> HistoryEntry:
    return HistoryEntry("2026-01-01T00:00:00Z", "deploy", "staging", "shop", "", digest, "",
                        status, 1.0, image=f"{image}@{digest}" if image else "")


def image(id_: str, *names: str, size: int = 0) -> LocalImage:
    return LocalImage(id_, names, size)


# -- what to keep ----------------------------------------------------------------------
def test_the_newest_releases_of_each_stack_are_kept() -> None:
    stack = [entry(A), entry(B), entry(C), entry(E)]
    assert releases_to_keep([stack], NAME, 3) == {B, C, E}
    assert releases_to_keep([stack], NAME, 1) == {E}
    assert releases_to_keep([stack], NAME, 20) == {A, B, C, E}
    assert releases_to_keep([stack, [entry(A)]], NAME, 1) == {E, A}  # another project


def test_a_release_deployed_twice_counts_once() -> None:
    """v1, v2, v1 again: a rollback walks to v2 then v1; both are kept with keep=2."""
    assert releases_to_keep([[entry(A), entry(B), entry(A)]], NAME, 2) == {A, B}


def test_releases_of_another_image_in_a_stack_are_not_counted() -> None:
    stack = [entry(A), entry(B), entry(C, image="ghcr.io/org/other")]
    assert releases_to_keep([stack], NAME, 2) == {A, B}
    assert releases_to_keep([[entry(A), entry(B, image="")]], NAME, 1) == {B}  # unnamed: ours


# -- what to remove ----------------------------------------------------------------------
def test_only_this_repositorys_images_of_no_kept_release_and_no_container_go() -> None:
    images = [
        image(A, f"{NAME}:v1", f"{NAME}@{A}"),  # kept release
        image(B, f"{NAME}@{B}"),  # old, unused: removed
        image(C, f"{NAME}:v3", f"{NAME}@{C}"),  # old, a stopped container uses it
        image(E, "ghcr.io/org/app:v1", "ghcr.io/org/app@" + E),  # another registry
        image(F, f"{NAME}2:v1", "127.0.0.1:5000/org:v1"),  # names that only start alike
    ]
    plan = plan_prune(images, NAME, keep_digests={A}, used_image_ids={C})
    assert [(r.image.id, r.names) for r in plan.remove] == [(B, (f"{NAME}@{B}",))]
    assert [i.id for i in plan.kept] == [A]
    assert [i.id for i in plan.in_use] == [C]


def test_an_image_with_names_in_other_repositories_loses_only_ours() -> None:
    """The containerd image store: one image, names in several repositories."""
    shared = image(B, "127.0.0.1:5000/other/x:1", f"{NAME}:v2", f"{NAME}@{B}",
                   f"{NAME}@{B}")
    [removal] = plan_prune([shared], NAME, keep_digests={A}, used_image_ids=set()).remove
    assert removal.names == (f"{NAME}:v2", f"{NAME}@{B}")
    assert removal.label({}) == "v2"


def test_a_dangling_image_is_known_by_its_repo_digest() -> None:
    """The classic store lists an untagged pulled image as `<none>:<none>` + repo@digest."""
    dangling = LocalImage.of({"Id": "sha256:config", "RepoTags": ["<none>:<none>"],
                              "RepoDigests": [f"{NAME}@{B}"], "Size": 7})
    [removal] = plan_prune([dangling, image(C, "<none>@<none>")], NAME, {A}, set()).remove
    assert removal.names == (f"{NAME}@{B}",)
    assert removal.label({}) == B.removeprefix("sha256:")[:12]
    assert removal.label({B: "v2"}) == "v2"  # the tag the history gave it
    assert plan_prune([dangling], NAME, {B}, set()).kept == (dangling,)


def test_a_docker_hub_repository_matches_its_short_names() -> None:
    hub = image(B, "org/app:v2", "org/app@" + B)
    [removal] = plan_prune([hub], "docker.io/org/app", {A}, set()).remove
    assert removal.names == ("org/app:v2", "org/app@" + B)
    assert plan_prune([hub], NAME, {A}, set()).remove == ()


# -- the engine calls --------------------------------------------------------------------
class FakeApi:
    def __init__(self, images: list[dict[str, Any]], containers: list[dict[str, Any]],
                 refuse: dict[str, str] | None = None) -> None:
        self._images, self._containers = images, containers
        self.removed: list[str] = []
        self.refuse = refuse or {}
        self.df_calls = 0

    def images(self) -> list[dict[str, Any]]:
        return [i for i in self._images if i["RepoTags"]]

    def containers(self, all: bool = False, filters: Any = None) -> list[dict[str, Any]]:
        assert all
        if filters:  # engine_labels: the containers with deploykit's release labels
            return [c for c in self._containers if "Labels" in c]
        return self._containers

    def networks(self, filters: Any = None) -> list[dict[str, Any]]:
        return []  # no release record: the containers' labels (an older deploykit) count

    def remove_image(self, name: str) -> list[dict[str, str]]:
        if name in self.refuse:
            raise docker.errors.APIError("409", explanation=self.refuse[name])
        for raw in self._images:
            if name in raw["RepoTags"]:
                raw["RepoTags"] = [n for n in raw["RepoTags"] if n != name]
                self.removed.append(name)
                return [{"Untagged": name}]
        raise docker.errors.ImageNotFound(f"No such image: {name}")

    # /system/df?type=image
    def _url(self, path: str) -> str:
        return path

    def _get(self, url: str, params: dict[str, str]) -> dict[str, str]:
        assert (url, params) == ("/system/df", {"type": "image"})
        self.df_calls += 1
        return {}

    def _result(self, response: Any, json: bool) -> dict[str, int]:
        return {"LayersSize": sum(i["Size"] for i in self._images if i["RepoTags"])}


def raw(id_: str, *names: str, size: int = 1_000_000) -> dict[str, Any]:
    return {"Id": id_, "RepoTags": list(names), "RepoDigests": [], "Size": size}


def test_prune_removes_by_name_and_measures_the_space_it_freed() -> None:
    api = FakeApi([raw(A, f"{NAME}@{A}"), raw(B, f"{NAME}:v2", f"{NAME}@{B}", size=2_500_000),
                   raw(C, f"{NAME}:v3", f"{NAME}@{C}"), raw(E, "127.0.0.1:5000/other:1")],
                  [{"ImageID": E}])
    stacks = [[entry(A), entry(B), replace(entry(C), tag="v3")]]
    result = prune_images(api, NAME, 1, stacks, running=C)
    assert api.removed == [f"{NAME}@{A}", f"{NAME}:v2", f"{NAME}@{B}"]
    assert result == PruneResult(removed=(A.removeprefix("sha256:")[:12], "v2"),
                                 reclaimed=3_500_000, kept=1, in_use=0)
    assert result.line(NAME, 1) == (
        f"Pruned 2 old image(s) of {NAME} (aaaaaaaaaaaa, v2): 3.5 MB reclaimed; kept 1 of the "
        "newest releases (keep_images: 1).")
    assert ("| old images | 2 removed (aaaaaaaaaaaa, v2), 3.5 MB reclaimed; 1 kept "
            "(`keep_images: 1`) |") in result.summary(1)


def test_the_running_digest_is_kept_even_when_no_stack_knows_it() -> None:
    api = FakeApi([raw(A, f"{NAME}@{A}"), raw(B, f"{NAME}@{B}")], [])
    result = prune_images(api, NAME, 3, [], running=B)
    assert api.removed == [f"{NAME}@{A}"]
    assert result.kept == 1


def test_nothing_to_remove_asks_no_size() -> None:
    api = FakeApi([raw(A, f"{NAME}@{A}"), raw(B, f"{NAME}@{B}")], [{"ImageID": A}])
    result = prune_images(api, NAME, 1, [[entry(B)]], running=B)
    assert (api.removed, api.df_calls) == ([], 0)
    assert result.line(NAME, 1) == (f"No old image of {NAME} to prune: kept 1 of the newest "
                                    "releases (keep_images: 1) and 1 a container uses.")


def test_a_name_gone_with_an_earlier_one_is_no_failure_and_a_refusal_is_reported() -> None:
    api = FakeApi([raw(A, f"{NAME}:v1"), raw(B, f"{NAME}:v2")], [],
                  refuse={f"{NAME}:v2": "conflict: image is being used"})
    api._images[0]["RepoDigests"] = [f"{NAME}@{A}"]  # listed, but gone with the tag
    result = prune_images(api, NAME, 1, [[entry(C)]], running=C)
    assert result.removed == ("v1",)
    assert result.failed == (f"{NAME}:v2: conflict: image is being used",)
    assert "; 1 could not be removed |" in result.summary(1)


def test_the_engines_release_stacks_count_too(tmp_path: Path) -> None:
    """Another project of the same image on this engine (production beside staging) keeps
    its rollback targets."""
    labels = {**labels_for_stack([entry(A), entry(B)]),
              "com.docker.compose.project": "shop-production"}
    api = FakeApi([raw(A, f"{NAME}@{A}"), raw(B, f"{NAME}@{B}"), raw(C, f"{NAME}@{C}"),
                   raw(E, f"{NAME}@{E}")], [{"ImageID": B, "Labels": labels}])
    stacks = prune_module.release_stacks(api, swarm=False)
    prune_images(api, NAME, 2, [*stacks, [entry(E)]], running=E)
    assert api.removed == [f"{NAME}@{C}"]


# -- when a deploy prunes ------------------------------------------------------------------
class FakeDeployment:
    def __init__(self, api: Any, actions: Actions, keep: str) -> None:
        self.settings = load_settings({"GITHUB_REPOSITORY": "org/app"}, {
            "mode": "deploy", "registry": "127.0.0.1:5000", "keep_images": keep,
            "environment": "staging"})
        self.actions, self.image_name = actions, NAME
        self.engine = type("Engine", (), {"api": api})()
        self.history = type("History", (), {"releases": lambda self, env, project: []})()


def test_keep_images_0_touches_no_engine(capsys: pytest.CaptureFixture[str]) -> None:
    deployment = FakeDeployment(None, Actions({}), "0")
    target = type("Target", (), {"digest": A, "tag": "v1"})()
    prune_after_deploy(deployment, "shop", target)  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""


def test_an_engine_error_is_a_warning_and_the_deploy_stays_deployed(
        capsys: pytest.CaptureFixture[str]) -> None:
    class Broken(FakeApi):
        def images(self) -> list[dict[str, Any]]:
            raise docker.errors.APIError("500", explanation="containerd: deadline exceeded")

    deployment = FakeDeployment(Broken([], []), Actions({}), "5")
    target = type("Target", (), {"digest": A, "tag": "v1"})()
    prune_after_deploy(deployment, "shop", target)  # type: ignore[arg-type]
    assert (f"warning: Old images not pruned: Pruning the old images of {NAME} failed: "
            "containerd: deadline exceeded The deploy is still `deployed`.") in \
        capsys.readouterr().err


def test_a_prune_logs_one_line_and_a_summary_row(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApi([raw(A, f"{NAME}:v1", f"{NAME}@{A}"), raw(B, f"{NAME}:v2", f"{NAME}@{B}")],
                  [])
    summary = tmp_path / "summary"
    actions = Actions({"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)})
    target = type("Target", (), {"digest": B, "tag": "v2"})()
    prune_after_deploy(FakeDeployment(api, actions, "1"), "shop", target)  # type: ignore[arg-type]
    assert api.removed == [f"{NAME}:v1", f"{NAME}@{A}"]
    assert capsys.readouterr().out.splitlines() == [
        f"Pruned 1 old image(s) of {NAME} (v1): 1.0 MB reclaimed; kept 1 of the newest "
        "releases (keep_images: 1)."]
    assert ("| old images | 1 removed (v1), 1.0 MB reclaimed; 1 kept (`keep_images: 1`) |"
            in summary.read_text())


def test_only_a_deployed_deploy_prunes(world: World, run: Any) -> None:  # noqa: F811
    world.running = {"app": D1, "worker": D1}
    assert run("deploy", image_tag="v2.0.0")[0] == 0
    assert world.pruned == [D2]


@pytest.mark.parametrize("case", ["failed health", "dry run", "rollback"])
def test_no_prune_after_a_failure_a_rollback_or_a_dry_run(
        world: World, run: Any, case: str) -> None:  # noqa: F811
    world.running = {"app": D1, "worker": D1}
    if case == "failed health":
        world.health = [False, True]
        code, outputs, _ = run("deploy", image_tag="v2.0.0")
        assert (code, outputs["status"]) == (1, "rolled_back")
    elif case == "dry run":
        code, outputs, _ = run("deploy", "--dry-run", image_tag="v2.0.0")
        assert (code, outputs["status"]) == (0, "planned")
    elif case == "rollback":
        code, outputs, _ = run("rollback", image_tag="v2.0.0")
        assert (code, outputs["status"]) == (0, "rolled_back")
    assert world.pruned == []


@pytest.mark.parametrize(("value", "expected"), [("", 5), ("0", 0), ("20", 20), (" 3 ", 3)])
def test_keep_images_is_a_bounded_number(value: str, expected: int) -> None:
    settings = load_settings({"GITHUB_REPOSITORY": "org/app"},
                             {"mode": "deploy", "keep_images": value})
    assert settings.keep_images == expected


@pytest.mark.parametrize("value", ["21", "-1", "٣", "3.0", "five"])
def test_keep_images_refuses_what_is_not_0_to_20(value: str) -> None:
    with pytest.raises(InputError, match="keep_images"):
        load_settings({"GITHUB_REPOSITORY": "org/app"}, {"mode": "deploy",
                                                         "keep_images": value})


def test_on_a_swarm_manager_the_stacks_service_labels_count_too() -> None:
    class Manager(FakeApi):
        def services(self, filters: dict[str, str]) -> list[dict[str, Any]]:
            assert filters == {"label": "deploykit.release"}
            return [{"Spec": {"Labels": labels_for_stack([entry(A), entry(B)])}},
                    {"Spec": {}}]

    api = Manager([raw(A, f"{NAME}@{A}"), raw(B, f"{NAME}@{B}"), raw(C, f"{NAME}@{C}")], [])
    assert prune_module.release_stacks(api, swarm=False) == []
    stacks = prune_module.release_stacks(api, swarm=True)
    assert [[e.digest for e in stack] for stack in stacks] == [[A, B]]
    prune_images(api, NAME, 2, stacks, running=B)
    assert api.removed == [f"{NAME}@{C}"]
