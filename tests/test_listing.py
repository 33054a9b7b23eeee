"""The GitHub Marketplace listing and the release: what the publish form and release.yml need.

Marketplace rules (docs.github.com, "Publishing actions in GitHub Marketplace"): one
action.yml at the root; a `name` that is unique and matches no GitHub user, organisation,
Marketplace category or GitHub feature; a description under 125 characters; branding.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

# Names an action may not take: the project's own bare name (an existing GitHub account),
# the owner, and the Marketplace categories (github.com/marketplace?type=actions).
TAKEN_NAMES = {"deploykit", "deploykit-org", "github", "actions"}
CATEGORIES = {
    "api management", "chat", "code quality", "code review", "continuous integration",
    "dependency management", "deployment", "ides", "learning", "localization", "mobile",
    "monitoring", "project management", "publishing", "recently added", "security",
    "support", "testing", "utilities", "container ci", "ai assisted",
}


def test_one_action_metadata_file_at_the_root() -> None:
    assert (ROOT / "action.yml").is_file()
    assert not (ROOT / "action.yaml").exists()
    assert ACTION["runs"]["using"] == "docker"


def test_the_name_is_not_a_taken_word() -> None:
    name = ACTION["name"]
    assert name == name.strip() and name
    assert name.lower() not in TAKEN_NAMES | CATEGORIES
    assert len(name.split()) > 1, "a single word is likely an existing GitHub account"
    assert name.lower().startswith("deploykit"), "the listing should be findable as deploykit"


def test_the_description_is_under_125_characters_on_one_line() -> None:
    description = ACTION["description"]
    assert 0 < len(description) < 125, len(description)
    assert "\n" not in description
    assert description.endswith(".")


def test_branding_has_an_icon_and_a_colour() -> None:
    assert ACTION["branding"] == {"icon": "package", "color": "blue"}


def test_gen_action_writes_the_same_name_and_description() -> None:
    header = (ROOT / "scripts/gen_action.py").read_text()
    assert f'name: "{ACTION["name"]}"' in header


def test_license_is_mit_like_pyproject() -> None:
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) ")
    assert "Permission is hereby granted, free of charge" in text


def test_security_policy_says_how_to_report_and_which_versions_get_fixes() -> None:
    text = (ROOT / "SECURITY.md").read_text()
    assert "## Reporting a vulnerability" in text
    assert "Report a vulnerability" in text
    assert "## Supported versions" in text
    major = f"v{VERSION.split('.')[0]}"
    assert f"| `{major}` (latest" in text


def test_changelog_has_an_entry_for_the_version_in_pyproject() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    entries = re.findall(r"(?m)^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", text)
    assert entries and entries[0] == VERSION, entries


def test_the_first_release_is_1_0_0_and_the_package_agrees() -> None:
    from deploykit import __version__

    text = (ROOT / "CHANGELOG.md").read_text()
    entries = re.findall(r"(?m)^## \[(\d+\.\d+\.\d+)\]", text)
    assert entries[-1] == "1.0.0"  # so that `@v1` exists from the first release on
    assert __version__ == VERSION


def release_version_script() -> str:
    workflow = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    (step,) = [s for s in workflow["jobs"]["version"]["steps"] if s.get("id") == "version"]
    script: str = step["run"]
    return script


def run_release_version(repo: Path, tags: list[str],
                        changelog: str | None = None) -> tuple[int, dict[str, str], str]:
    """Run release.yml's own version step in a git checkout holding TAGS."""
    for name in ("pyproject.toml", "CHANGELOG.md"):
        shutil.copy(ROOT / name, repo / name)
    if changelog is not None:
        (repo / "CHANGELOG.md").write_text(changelog)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], cwd=repo, check=True)
    for tag in tags:
        subprocess.run([*git, "tag", tag], cwd=repo, check=True)
    output = repo / "github_output"
    output.touch()
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", release_version_script()],
                            cwd=repo, capture_output=True, text=True, check=False,
                            env={"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(output),
                                 "HOME": str(repo)})
    values = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return result.returncode, values, result.stdout + result.stderr


def test_release_would_publish_v1_0_0_v1_0_and_v1(tmp_path: Path) -> None:
    major, minor, _ = VERSION.split(".")
    code, values, log = run_release_version(tmp_path, [])
    assert code == 0, log
    assert values == {"version": VERSION, "minor": f"v{major}.{minor}", "major": f"v{major}",
                      "move_minor": "true", "move_major": "true"}
    if VERSION == "1.0.0":  # the first release: the tags every example pins
        assert (f"v{values['version']}", values["minor"], values["major"]) == (
            "v1.0.0", "v1.0", "v1")


def test_release_moves_v1_only_for_the_highest_release(tmp_path: Path) -> None:
    major = VERSION.split(".")[0]
    code, values, log = run_release_version(tmp_path, [f"v{major}.99.0"])
    assert code == 0, log
    assert (values["move_minor"], values["move_major"]) == ("true", "false")


def test_release_refuses_a_published_version(tmp_path: Path) -> None:
    code, _, log = run_release_version(tmp_path, [f"v{VERSION}"])
    assert code == 1
    assert "::error title=Already released::" in log


def test_release_refuses_a_version_without_a_changelog_entry(tmp_path: Path) -> None:
    code, values, log = run_release_version(
        tmp_path, [], changelog="# Changelog\n\n## [0.9.0] - 2026-01-01\n")
    assert (code, values) == (1, {})
    assert log == ("::error title=No changelog entry::CHANGELOG.md has no "
                   f"'## [{VERSION}] - YYYY-MM-DD' section; add it (docs/releasing.md)\n")


def test_release_notes_are_the_changelog_section(tmp_path: Path) -> None:
    workflow = (ROOT / ".github/workflows/release.yml").read_text()
    (awk,) = re.findall(r"awk -v head=.*?CHANGELOG\.md", workflow)
    command = awk.replace("$VERSION", VERSION).replace("CHANGELOG.md",
                                                        str(ROOT / "CHANGELOG.md"))
    notes = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                           check=True).stdout
    assert notes.strip().startswith("The first release")
    assert "## [" not in notes
    assert "--notes-file \"$notes\"" in workflow
