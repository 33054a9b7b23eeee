from __future__ import annotations

import io
import json
from pathlib import Path

from deploykit.actions import (
    Actions,
    env_secrets,
    escape_property,
    heredoc_block,
    looks_like_command,
    markdown_cell,
    markdown_table,
    markdown_text,
)
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


def test_the_password_inside_a_url_is_masked_alone_too(make_actions) -> None:
    actions = make_actions()
    actions.mask("DATABASE_URL=postgres://shop:p%40ss-w0rd@db:5432/shop\n"
                 "BROKER_URL=redis://:r3dis-pw@redis:6379/0")
    assert actions.redact("auth failed: p@ss-w0rd, p%40ss-w0rd, r3dis-pw") == \
        "auth failed: ***, ***, ***"
    assert actions.redact("postgres://shop:p%40ss-w0rd@db:5432/shop") == "***"
    assert "::add-mask::p@ss-w0rd" in actions.out.getvalue().splitlines()


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


def test_terminal_multiline_outputs_are_indented_never_heredoc(make_actions) -> None:
    actions = make_actions(in_actions=False)
    actions.set_output("tags", "sha-0123456\nstaging-latest\ntest-20261127-1")
    actions.set_output("status", "planned")
    actions.print_outputs()
    assert actions.out.getvalue() == ("tags=\n  sha-0123456\n  staging-latest\n"
                                      "  test-20261127-1\nstatus=planned\n")


def test_print_json_replaces_the_outputs_object() -> None:
    out = io.StringIO()
    actions = Actions({}, stdout=out, stderr=io.StringIO(), json_outputs=True)
    actions.mask("s3cret-value")
    actions.print_json([{"tag": "v1", "note": "s3cret-value"}])
    actions.print_outputs()
    assert out.getvalue() == ('[\n  {\n    "note": "***",\n    "tag": "v1"\n  }\n]\n')


def test_terminal_outputs_as_json() -> None:
    out = io.StringIO()
    actions = Actions({}, stdout=out, stderr=io.StringIO(), json_outputs=True)
    actions.set_output("status", "built")
    actions.print_outputs()
    assert json.loads(out.getvalue()) == {"status": "built"}


def test_markdown_table_keeps_every_cell_in_its_cell() -> None:
    assert markdown_table(["a", "b"], [["x|y", "z"], ["`v1`", "1\r\n2\n<script>"]]) == (
        "| a | b |\n| --- | --- |\n| x&#124;y | z |\n| `v1` | 1<br>2<br>&lt;script&gt; |")


HOSTILE = ("staging\n::stop-commands::pwned\n::add-mask::x\n  ::error::fake\n"
           "see ##[warning]legacy")


def stop_blocks(out: str) -> list[list[str]]:
    """Each ::stop-commands::TOKEN ... ::TOKEN:: block's lines; asserts the framing."""
    blocks, lines = [], out.splitlines()
    while lines:
        first = lines.pop(0)
        assert first.startswith("::stop-commands::deploykit-"), first
        token = first.removeprefix("::stop-commands::")
        assert len(token) == len("deploykit-") + 32
        end = lines.index(f"::{token}::")
        blocks.append(lines[:end])
        del lines[:end + 1]
    return blocks


def test_untrusted_text_sits_between_stop_commands_and_its_token(make_actions) -> None:
    actions = make_actions()
    actions.mask("s3cr3t-value")
    actions.out.truncate(0)
    actions.out.seek(0)
    actions.untrusted("Logs of app-1", HOSTILE + "\ns3cr3t-value\n")
    assert stop_blocks(actions.out.getvalue()) == [
        ["Logs of app-1", *HOSTILE.splitlines(), "***"]]


def test_two_untrusted_blocks_never_share_a_token(make_actions) -> None:
    actions = make_actions()
    actions.untrusted("", "a")
    actions.untrusted("", "b")
    out = actions.out.getvalue().splitlines()
    assert out[0] != out[3]
    assert stop_blocks(actions.out.getvalue()) == [["a"], ["b"]]


def test_untrusted_on_a_terminal_is_plain(make_actions) -> None:
    actions = make_actions(in_actions=False)
    actions.untrusted("History", "::error::x\n")
    assert actions.err.getvalue() == "History\n::error::x\n"
    assert actions.out.getvalue() == ""


def test_info_that_looks_like_a_command_is_made_inert(make_actions) -> None:
    actions = make_actions()
    actions.info("Nothing of project 'x\n::stop-commands::y' runs yet.")
    actions.info("plain line")
    out = actions.out.getvalue()
    assert out.endswith("\nplain line\n")
    assert stop_blocks(out.removesuffix("plain line\n")) == [
        ["Nothing of project 'x", "::stop-commands::y' runs yet."]]


def test_looks_like_command() -> None:
    assert looks_like_command("::error::x")
    assert looks_like_command("ok\n \t::group::x")
    assert looks_like_command("text ##[error]x")
    assert not looks_like_command("a :: b\nplain")


def test_markdown_text_is_inert() -> None:
    assert markdown_text("<img src=x onerror=1> [a](javascript:1) **b** `c` #d\nnext") == (
        "&lt;img src=x onerror=1&gt; \\[a\\]\\(javascript:1\\) \\*\\*b\\*\\* "
        "\\`c\\` \\#d next")
    assert markdown_cell(markdown_text("a|b\\|c")) == "a&#124;b\\\\&#124;c"


COMPOSE_ENV_PAIRS = [
    ("PORT", "8080"), ("DEBUG", "true"), ("LOG_LEVEL", "info"), ("APP_ENV", "production"),
    ("DB_HOST", "db"), ("DATABASE_URL", "postgres://u:pw@db/x"), ("API_KEY", "abc"),
    ("POSTGRES_PASSWORD", "s3cret"), ("DB_PW", "hunter"), ("GREETING", "hello-from-env"),
    ("CLONE_URL", "https://ghp_0123456789abcdef@github.com/o/r"),
    ("SSH_URL", "ssh://git@github.com/o/r"), ("EMPTY_TOKEN", ""), ("ONE_SECRET", "x"),
]


def test_env_secrets_masks_what_can_be_a_secret_and_shows_a_port() -> None:
    assert env_secrets(COMPOSE_ENV_PAIRS) == {
        "postgres://u:pw@db/x", "pw",  # the URL whole (20 characters) and its password
        "abc", "s3cret", "hunter",  # secret-like keys, at any length from 2
        "hello-from-env",  # 12 characters or more
        "https://ghp_0123456789abcdef@github.com/o/r", "ghp_0123456789abcdef",  # a token user
        "ssh://git@github.com/o/r",  # long enough; `git` alone is a user, not masked
    }


def test_mask_env_redacts_the_password_and_keeps_the_port(make_actions) -> None:
    actions = make_actions()
    actions.mask_env([("PORT", "8080"), ("DATABASE_URL", "postgres://u:pw@db/x")])
    assert actions.out.getvalue() == "::add-mask::postgres://u:pw@db/x\n::add-mask::pw\n"
    assert actions.redact("smoke http://127.0.0.1:8080/healthz; db postgres://u:pw@db/x; pw") \
        == "smoke http://127.0.0.1:8080/healthz; db ***; ***"


def test_registry_password_is_masked_whole_at_any_length(make_actions) -> None:
    actions = make_actions()
    actions.mask("p4")
    assert actions.redact("login with p4") == "login with ***"
