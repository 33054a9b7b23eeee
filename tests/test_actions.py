from __future__ import annotations

import io
import json
from pathlib import Path

from deploykit.actions import Actions, escape_property, heredoc_block, markdown_table
from tests.conftest import parse_github_output


def test_outputs_use_random_heredoc_delimiters(make_actions, tmp_path: Path) -> None:
    actions = make_actions()
    actions.set_output("tags", "v1.2.3\nlatest")
    actions.set_output("digest", "sha256:abc")
    text = (tmp_path / "github_output").read_text()
    first = text.splitlines()[0]
    assert first.startswith("tags<<ghadelimiter_")
    assert len(first.split("<<")[1]) == len("ghadelimiter_") + 32
    assert parse_github_output(text) == {"tags": "v1.2.3\nlatest", "digest": "sha256:abc"}


def test_two_blocks_never_share_a_delimiter() -> None:
    assert heredoc_block("a", "x").split("\n")[0] != heredoc_block("a", "x").split("\n")[0]


def test_mask_is_emitted_before_use_and_redacted_everywhere(make_actions, tmp_path) -> None:
    actions = make_actions()
    actions.mask("s3cr3t-value")
    actions.info("password is s3cr3t-value")
    actions.error("failed with s3cr3t-value", title="t s3cr3t-value")
    actions.set_output("x", "s3cr3t-value")
    actions.add_summary("s3cr3t-value")
    lines = actions.out.getvalue().splitlines()
    assert lines[0] == "::add-mask::s3cr3t-value"
    assert lines[1:] == ["password is ***", "::error title=t ***::failed with ***"]
    assert "s3cr3t-value" not in (tmp_path / "github_output").read_text()
    assert (tmp_path / "step_summary").read_text() == "***\n\n"


def test_multiline_secret_masks_each_line(make_actions) -> None:
    actions = make_actions()
    actions.mask("KEY=alpha-one\nOTHER=beta-two")
    assert actions.redact("alpha-one beta-two") == "*** ***"


def test_outside_actions_mask_prints_nothing(make_actions) -> None:
    actions = make_actions(in_actions=False)
    actions.mask("s3cr3t-value")
    assert actions.out.getvalue() == ""
    assert actions.err.getvalue() == ""


def test_annotations_escape_properties(make_actions) -> None:
    actions = make_actions()
    actions.error("line1\nline2 100%", title="Invalid input: mode")
    assert actions.out.getvalue() == (
        "::error title=Invalid input%3A mode::line1%0Aline2 100%25\n")
    assert escape_property("a,b:c") == "a%2Cb%3Ac"


def test_groups(make_actions) -> None:
    actions = make_actions()
    with actions.group("Pull images"):
        actions.info("pulling")
    assert actions.out.getvalue() == "::group::Pull images\npulling\n::endgroup::\n"


def test_terminal_outputs_are_name_value_lines(make_actions) -> None:
    actions = make_actions(in_actions=False)
    actions.set_output("digest", "sha256:abc")
    actions.set_output("status", "built")
    actions.print_outputs()
    assert actions.out.getvalue() == "digest=sha256:abc\nstatus=built\n"


def test_terminal_outputs_as_json() -> None:
    out = io.StringIO()
    actions = Actions({}, stdout=out, stderr=io.StringIO(), json_outputs=True)
    actions.set_output("status", "built")
    actions.print_outputs()
    assert json.loads(out.getvalue()) == {"status": "built"}


def test_markdown_table_escapes_pipes() -> None:
    assert markdown_table(["a", "b"], [["x|y", "z"]]) == (
        "| a | b |\n| --- | --- |\n| x\\|y | z |")
