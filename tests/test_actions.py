from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest
import responses

from deploykit.actions import (
    REDACTED,
    Actions,
    env_secrets,
    escape_property,
    heredoc_block,
    is_markdown_table,
    looks_like_command,
    markdown_cell,
    markdown_table,
    markdown_text,
    one_line,
    plain_text,
    redact_url_credentials,
    url_passwords,
    url_tokens,
    without_credentials,
)
from deploykit.cli import main
from deploykit.errors import OutputFileError
from tests.conftest import parse_github_output
from tests.runner_log import live_commands


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


# -- issue 20: a `\r` (or another line break) starts a line for the runner --------------
CARRIAGE_RETURN_ATTACKS = [
    "x\r::error title=X::y", "x\r\n::warning::y", "ok\x85::error::y", "ok\u2028::error::y",
    "ok\x0b::error::y", "ok\x0c::error::y", "ok\x1e::error::y", "done\r  ::add-mask::y",
]


@pytest.mark.parametrize("text", CARRIAGE_RETURN_ATTACKS)
def test_a_command_after_any_line_break_is_seen(text: str) -> None:
    assert looks_like_command(text)


@pytest.mark.parametrize("text", CARRIAGE_RETURN_ATTACKS)
def test_info_after_a_carriage_return_is_no_live_command(make_actions, text: str) -> None:
    actions = make_actions()
    actions.info(text)
    assert live_commands(actions.out.getvalue()) == []
    assert "::" in actions.out.getvalue()  # shown, inert


def test_live_commands_reads_the_log_as_the_runner_does() -> None:
    assert live_commands("a\r::error::x\n::warning::y\r\n") == ["::error::x", "::warning::y"]
    assert live_commands("::stop-commands::t\n::error::x\r::t::\r::notice::z") == [
        "::notice::z"]


def test_one_line_escapes_control_characters() -> None:
    assert one_line("bob\r::error::x\n") == "bob\\r::error::x\\n"
    assert one_line("ok user.name-1 é") == "ok user.name-1 é"


# -- issue 20: credentials inside a URL -------------------------------------------------
def test_a_url_password_is_redacted_wherever_it_is_printed(make_actions, tmp_path) -> None:
    actions = make_actions()
    url = "http://smoke:Sm0ke-PW@127.0.0.1:8080/health"
    actions.info(f"Smoke test: {url} answered 200.")
    actions.warning(f"{url} is slow", title=f"Slow {url}")
    actions.error(f"{url} failed")
    actions.set_output("url", url)
    actions.add_summary(f"| {url} |")
    written = (actions.out.getvalue() + (tmp_path / "github_output").read_text()
               + (tmp_path / "step_summary").read_text())
    assert "Sm0ke-PW" not in written
    assert "http://smoke:***@127.0.0.1:8080/health" in actions.out.getvalue()


def test_redact_url_credentials_and_without_credentials() -> None:
    assert redact_url_credentials("a https://u:p%40ss@h/x b redis://:pw@r:6379/0") == (
        "a https://u:***@h/x b redis://:***@r:6379/0")
    assert redact_url_credentials("docker-image://reg:5000/base@sha256:ab git@github.com") \
        == "docker-image://reg:5000/base@sha256:ab git@github.com"
    assert without_credentials("http://u:pw@host:8080/p?q=1") == "http://host:8080/p?q=1"
    assert without_credentials("http://host/") == "http://host/"


LONG = 100_000


@pytest.mark.parametrize("value", [
    "a" * LONG,                               # one long scheme-like run, no `://`
    "a://" + "b" * LONG,                      # a URL with a huge userinfo and no `@`
    "a://" + "b:" * (LONG // 2),              # many `:` in what could be a userinfo
    "a:/" * (LONG // 3),                      # almost-URLs everywhere
    "x://" * (LONG // 4),                     # `://` everywhere
    "postgres://u:" + "p" * LONG + "@db/x",   # a real URL with a long password
])
def test_url_scans_of_a_100_kb_value_are_linear(value: str) -> None:
    """Before: 36-111 s per value (quadratic regexes). The time is measured in the
    report; here the results are checked."""
    password = "p" * LONG if value.startswith("postgres") else None
    assert url_passwords([value]) == ({password} if password else set())
    assert url_tokens([value]) == set()
    assert env_secrets([("LONG_VALUE", value)]) == ({value, password} if password else {value})
    assert (REDACTED in redact_url_credentials(value)) == bool(password)


# -- issue 20: GITHUB_OUTPUT and GITHUB_STEP_SUMMARY that cannot be written ------------
@pytest.mark.parametrize("where", ["missing folder", "directory"])
def test_an_output_file_that_cannot_be_opened_is_an_error_naming_it(
        tmp_path: Path, where: str) -> None:
    path = tmp_path / "no" / "output" if where == "missing folder" else tmp_path
    actions = Actions({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(path)},
                      stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(OutputFileError) as caught:
        actions.set_output("status", "deployed")
    assert caught.value.message.startswith(f"Cannot write to GITHUB_OUTPUT ({path}): ")
    assert "GITHUB_OUTPUT must name a writable file" in caught.value.hint
    assert caught.value.title == "Cannot write GITHUB_OUTPUT"
    actions.set_output("duration_seconds", "1.0")  # reported once; later outputs are kept
    assert actions.outputs == {"status": "deployed", "duration_seconds": "1.0"}


def short_writes(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    """os.write in deploykit.actions as on a file system with ``free`` bytes left."""
    left, real_write = [free], os.write

    def write(descriptor: int, data: bytes) -> int:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        count = real_write(descriptor, data[:left[0]])
        left[0] -= count
        return count

    monkeypatch.setattr("deploykit.actions.os.write", write)


def test_a_full_output_file_keeps_no_half_written_block(
        make_actions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    actions = make_actions()
    actions.set_output("digest", "sha256:abc")
    before = (tmp_path / "github_output").read_text()
    short_writes(monkeypatch, 20)  # room for `status<<ghadelim`, not for the block
    with pytest.raises(OutputFileError, match=r"GITHUB_OUTPUT .*No space left on device"):
        actions.set_output("status", "deployed")
    assert (tmp_path / "github_output").read_text() == before
    assert parse_github_output(before) == {"digest": "sha256:abc"}


def test_a_summary_that_cannot_be_written_is_one_warning(
        make_actions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    actions = make_actions()
    short_writes(monkeypatch, 5)
    actions.add_summary("### Deploy: deployed")
    actions.add_summary("### again")
    assert (tmp_path / "step_summary").read_text() == ""
    assert actions.out.getvalue().count("::warning title=Cannot write GITHUB_STEP_SUMMARY::") \
        == 1


def test_the_cli_reports_an_unwritable_github_output_as_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a traceback (OSError) and no ::error."""
    env = {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), "PATH": os.environ["PATH"]}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.GET, "http://127.0.0.1:5000/v2/org/app/tags/list",
                 json={"name": "org/app", "tags": None})
        code = main(["tags", "--registry", "127.0.0.1:5000", "--image-repo", "org/app"],
                    env=env)
    out = capsys.readouterr().out
    assert code == 1
    assert f"::error title=Cannot write GITHUB_OUTPUT::Cannot write to GITHUB_OUTPUT " \
           f"({tmp_path})" in out


# -- issue 23: the summary's Markdown is for the summary page ---------------------------
def test_a_terminal_gets_the_summary_as_plain_text_without_its_details(make_actions) -> None:
    actions = make_actions(in_actions=False)
    actions.add_summary("### Deploy: deployed\n\n" + markdown_table(
        ["", "value"], [["status", "deployed"], ["image", "`r/app@sha256:ab`"],
                        ["note", markdown_text("a|b <c> *d*")]])
        + "\n\n#### Health of the new containers\n\n"
        + markdown_table(["service", "verdict"], [["app", "healthy"]])
        + "\n\n**Note:** see [the docs](https://x.test/d).")
    assert actions.err.getvalue() == (
        "\nDeploy: deployed\n\n"
        "        value\n"
        "status  deployed\n"
        "image   `r/app@sha256:ab`\n"
        "note    a|b <c> *d*\n")
    assert actions.out.getvalue() == ""


def test_a_terminal_log_shows_a_table_as_columns(make_actions) -> None:
    actions = make_actions(in_actions=False)
    table = markdown_table(["service", "verdict"], [["app", "healthy"], ["worker", "-"]])
    actions.info(table)
    assert actions.err.getvalue() == "service  verdict\napp      healthy\nworker   -\n"
    in_actions = make_actions()
    in_actions.info(table)
    assert in_actions.out.getvalue() == table + "\n"


def test_plain_text_of_markdown() -> None:
    assert plain_text("## A\n\n- x: [t](u)\n\n| a | b |\n|---|---|\n| 1 | 2<br>3 |") == (
        "A\n\n- x: t (u)\n\na  b\n1  2 / 3\n")
    assert not is_markdown_table("| a |")
    assert is_markdown_table(markdown_table(["a"], [["1"]]))
