"""GitHub Actions I/O: workflow commands, step outputs and the job summary.

Everything deploykit prints goes through :class:`Actions`, so secrets are
masked and redacted in one place. Inside a workflow (``GITHUB_ACTIONS=true``)
this speaks the runner's workflow-command protocol; on a terminal it prints
plain log lines to stderr and ``name=value`` outputs (or JSON) to stdout.

Text from outside (container logs, history entries, registry answers) never
drives the runner: :meth:`Actions.untrusted` prints it between
``::stop-commands::<random token>`` and ``::<token>::``, and any log line that
looks like a workflow command gets the same treatment. In the job summary,
:func:`markdown_text` makes such text inert and :func:`markdown_table` keeps
every cell inside its cell.
"""

from __future__ import annotations

import errno
import html
import json
import os
import re
import secrets as _random
import string
import sys
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TextIO

from deploykit.errors import OutputFileError

REDACTED = "***"
# A line the runner would take as a command: `::name::` after leading blanks (the runner
# trims Unicode whitespace), or the legacy `##[name]` anywhere in the line.
_COMMAND_START = re.compile(r"\s*::")
_LEGACY_COMMAND = "##["
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!~])")
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
# What follows `scheme://` up to the `@` of a userinfo: possessive, anchored at the `://`
# found by str.find, so a long value is scanned once (no backtracking, no rescans).
_USERINFO = re.compile(r"([^:/?#@\s]*+)(?::([^/?#@\s]++))?@")


def _url_userinfos(text: str) -> Iterator[re.Match[str]]:
    """The ``user[:password]@`` part of every ``scheme://`` URL in ``text``, in linear
    time: each character is looked at a bounded number of times, whatever the input."""
    start = 0
    while (colon := text.find("://", start)) != -1:
        start = colon + 3
        first = colon
        while first > 0 and text[first - 1] in _SCHEME_CHARS:
            first -= 1
        if not any(char in string.ascii_letters for char in text[first:colon]):
            continue  # a scheme starts with a letter: `1://x@y` is no URL
        if (match := _USERINFO.match(text, start)) is not None:
            yield match


def url_passwords(texts: list[str]) -> set[str]:
    """The passwords inside URLs (``postgres://user:PASSWORD@db/app``), as written and
    decoded: a program that prints the URL's parts shows them alone."""
    found = set()
    for text in texts:
        for match in _url_userinfos(text):
            if match.group(2):
                found.update({match.group(2), urllib.parse.unquote(match.group(2))})
    return found


def url_tokens(texts: list[str]) -> set[str]:
    """A user part with no password that is long enough to be a token
    (``https://ghp_xxx@github.com``), as written and decoded; ``git@`` is a user."""
    found = set()
    for text in texts:
        for match in _url_userinfos(text):
            if match.group(2) is None and len(match.group(1)) >= SECRET_MIN_LENGTH:
                found.update({match.group(1), urllib.parse.unquote(match.group(1))})
    return found


def redact_url_credentials(text: str) -> str:
    """Every URL's password as ``***``: a password written into a URL (``smoke_url:
    http://u:PW@host/``) never reaches a log, an annotation, an output or the summary,
    whoever prints the URL. (A user part alone stays: ``docker-image://name@sha256:...``
    is no credential; the smoke test shows its URLs without any user part.)"""
    spans = [match.span(2) for match in _url_userinfos(text) if match.group(2)]
    for begin, end in reversed(spans):
        text = text[:begin] + REDACTED + text[end:]
    return text


def without_credentials(url: str) -> str:
    """``url`` with no userinfo (``http://u:PW@host/x`` -> ``http://host/x``): the URL
    to show or to hand to anyone but the request that needs the credentials."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


# The masking rule of compose_env (docs/deploy.md, "Which compose_env values are masked"):
# a value is masked whole when its key names a secret or when it is long enough to be
# one; the credentials inside a URL are masked on their own too. Shorter values of other
# keys (a port, `true`, `info`, `db`, `production`) stay readable in the logs.
SECRET_KEY_RE = re.compile(
    r"PASS|PWD|TOKEN|SECRET|KEY|CREDENTIAL|AUTH|PRIVATE|SALT|CERT|SIGNATURE|COOKIE|SESSION"
    r"|DSN|(^|_)PW($|_)", re.IGNORECASE)
SECRET_MIN_LENGTH = 12  # generated secrets are longer: a uuid 36, a GitHub token 40
MASK_MIN_LENGTH = 2  # shorter strings are no secret, and masking them garbles every line


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY_RE.search(key))


def env_secrets(pairs: Iterable[tuple[str, str]]) -> set[str]:
    """The strings of ``KEY=VALUE`` pairs that can reveal a secret (the rule above)."""
    found: set[str] = set()
    for key, raw in pairs:
        value = raw.strip()
        found |= url_passwords([value]) | url_tokens([value])
        if is_secret_key(key) or len(value) >= SECRET_MIN_LENGTH:
            found.add(value)
    return {text for text in found if len(text.strip()) >= MASK_MIN_LENGTH}


def escape_data(value: str) -> str:
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(value: str) -> str:
    return escape_data(value).replace(":", "%3A").replace(",", "%2C")


def looks_like_command(text: str) -> bool:
    """Whether a line of ``text`` could be read as a workflow command by the runner.

    The runner ends a line at ``\\r`` as well as ``\\n``; every line break Python knows
    (``str.splitlines``: also ``\\v``, ``\\f``, ``\\x1c``-``\\x1e``, ``\\x85``, U+2028,
    U+2029) counts here, a superset of the runner's."""
    return _LEGACY_COMMAND in text or any(
        _COMMAND_START.match(line) for line in text.splitlines())


def one_line(value: str) -> str:
    """A value from outside inside our own sentence: control characters (line breaks
    included) shown escaped, as ``repr`` shows them, so it cannot start a line."""
    return "".join(char if char.isprintable() or char == " " else
                   repr(char)[1:-1] for char in value)


def stop_commands_token(text: str) -> str:
    """A token for ``::stop-commands::`` that ``text`` does not contain (128 random bits)."""
    token = f"deploykit-{_random.token_hex(16)}"
    while token in text:  # pragma: no cover - 128 random bits
        token = f"deploykit-{_random.token_hex(16)}"
    return token


def heredoc_block(name: str, value: str) -> str:
    """One ``name<<DELIM`` block as GitHub parses it in GITHUB_OUTPUT/GITHUB_ENV."""
    delimiter = f"ghadelimiter_{_random.token_hex(16)}"
    while delimiter in value:  # pragma: no cover - 128 random bits
        delimiter = f"ghadelimiter_{_random.token_hex(16)}"
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


class Actions:
    """The single writer of logs, annotations, outputs and the summary."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        json_outputs: bool = False,
    ) -> None:
        self.in_actions = env.get("GITHUB_ACTIONS") == "true"
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr
        self._output_file = env.get("GITHUB_OUTPUT") or None
        self._summary_file = env.get("GITHUB_STEP_SUMMARY") or None
        self._json_outputs = json_outputs
        self._secrets: set[str] = set()
        self.outputs: dict[str, str] = {}
        self.summary_parts: list[str] = []
        self._data_printed = False
        self._broken_files: set[str] = set()  # reported once; not written to again
        self.summary_enabled = True  # the `summary` input

    # -- secrets -----------------------------------------------------------
    def mask(self, secret: str | None) -> None:
        """Register a secret, whole (and each of its lines and ``KEY=VALUE`` values):
        masked by the runner and redacted by us. For the registry password, the
        GitHub token, build secrets: always, at any length."""
        if not secret:
            return
        lines = secret.splitlines()
        values = [line.partition("=")[2] for line in lines if "=" in line]  # KEY=VALUE lists
        passwords = url_passwords([secret, *lines, *values])
        for raw in {secret, *lines, *values, *passwords}:
            self._register(raw)

    def mask_env(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Register what can be a secret in ``compose_env`` (:func:`env_secrets`)."""
        for text in sorted(env_secrets(pairs)):
            self._register(text)

    def _register(self, raw: str) -> None:
        candidate = raw.strip()
        if len(candidate) < MASK_MIN_LENGTH or candidate in self._secrets:
            return
        self._secrets.add(candidate)
        if self.in_actions:
            self._stdout.write(f"::add-mask::{escape_data(candidate)}\n")
            self._stdout.flush()

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return redact_url_credentials(text)

    # -- logs and annotations -----------------------------------------------
    @property
    def _log(self) -> TextIO:
        return self._stdout if self.in_actions else self._stderr

    def info(self, message: str) -> None:
        """A log line. On a terminal a Markdown table (:func:`markdown_table`) is shown as
        aligned columns; in a workflow a line that looks like a command is made inert."""
        message = self.redact(message)
        if not self.in_actions and is_markdown_table(message):
            message = plain_text(message).rstrip("\n")
        if self.in_actions and looks_like_command(message):
            self.untrusted("", message)  # a value from outside made a line look like one
            return
        self._log.write(message + "\n")
        self._log.flush()

    def untrusted(self, title: str, text: str) -> None:
        """Print text from outside (logs, history, registry answers) so it stays text.

        Under Actions it sits between ``::stop-commands::<token>`` and ``::<token>::``:
        the runner ignores every command in between, and nobody can guess the token.
        """
        title, text = self.redact(title), self.redact(text).rstrip("\n")
        lines = ([title] if title else []) + [text]
        if not self.in_actions:
            self._stderr.write("\n".join(lines) + "\n")
            self._stderr.flush()
            return
        token = stop_commands_token(f"{title}\n{text}")
        self._stdout.write("\n".join([f"::stop-commands::{token}", *lines, f"::{token}::"])
                           + "\n")
        self._stdout.flush()

    def debug(self, message: str) -> None:
        if self.in_actions:
            self._stdout.write(f"::debug::{escape_data(self.redact(message))}\n")

    def warning(self, message: str, *, title: str = "") -> None:
        self._annotate("warning", message, title)

    def error(self, message: str, *, title: str = "") -> None:
        self._annotate("error", message, title)

    def notice(self, message: str, *, title: str = "") -> None:
        self._annotate("notice", message, title)

    def _annotate(self, level: str, message: str, title: str) -> None:
        message, title = self.redact(message), self.redact(title)
        if self.in_actions:
            props = f" title={escape_property(title)}" if title else ""
            self._stdout.write(f"::{level}{props}::{escape_data(message)}\n")
        else:
            head = f"{level}: {title}: " if title else f"{level}: "
            self._stderr.write(head + message.replace("\n", "\n  ") + "\n")
        self._log.flush()

    @contextmanager
    def group(self, title: str) -> Iterator[None]:
        """A collapsible log group around a long step."""
        if self.in_actions:
            self._stdout.write(f"::group::{escape_data(self.redact(title))}\n")
        else:
            self._stderr.write(f"==> {self.redact(title)}\n")
        self._log.flush()
        try:
            yield
        finally:
            if self.in_actions:
                self._stdout.write("::endgroup::\n")
                self._stdout.flush()

    # -- outputs -------------------------------------------------------------
    def set_output(self, name: str, value: str) -> None:
        """Record an output; in a workflow, append its whole ``name<<DELIMITER`` block to
        GITHUB_OUTPUT. A file that cannot take it raises :class:`OutputFileError` once
        (later outputs are kept in :attr:`outputs` only: the step has failed already)."""
        value = self.redact(value)
        self.outputs[name] = value
        if self._output_file and "GITHUB_OUTPUT" not in self._broken_files:
            self._append("GITHUB_OUTPUT", self._output_file, heredoc_block(name, value))

    def print_outputs(self) -> None:
        """Outside a workflow, the outputs go to stdout for people and scripts.

        ``name=value`` a line; a multi-line value as ``name=`` followed by its lines
        indented by two spaces (never the runner's ``name<<DELIMITER`` syntax). With
        ``--json``: one JSON object, unless the command printed its own data.
        """
        if self._output_file or self._data_printed:
            return
        if self._json_outputs:
            self._stdout.write(json.dumps(self.outputs, indent=2, sort_keys=True) + "\n")
        elif self.in_actions and looks_like_command(text := plain_outputs(self.outputs)):
            self.untrusted("", text)  # no GITHUB_OUTPUT, and a value reads as a command
        else:
            self._stdout.write(plain_outputs(self.outputs))
        self._stdout.flush()

    def print_json(self, data: object) -> None:
        """A command's own data as JSON on stdout (``deploykit history --json``)."""
        self._stdout.write(self.redact(json.dumps(data, indent=2, sort_keys=True)) + "\n")
        self._stdout.flush()
        self._data_printed = True

    # -- job summary -------------------------------------------------------
    def add_summary(self, markdown: str) -> None:
        if not self.summary_enabled:
            return
        markdown = self.redact(markdown).rstrip("\n") + "\n"
        self.summary_parts.append(markdown)
        if not self._summary_file:
            if not self.in_actions and not self._json_outputs:  # a person at a terminal
                self._stderr.write("\n" + plain_text(without_details(markdown)))
                self._stderr.flush()
            return
        if "GITHUB_STEP_SUMMARY" in self._broken_files:
            return
        try:
            self._append("GITHUB_STEP_SUMMARY", self._summary_file, markdown + "\n")
        except OutputFileError as exc:  # a summary is a report, not the deploy's result
            self.warning(f"{exc.message} The job summary is left out.", title=exc.title)

    def _append(self, variable: str, path: str, text: str) -> None:
        """Append ``text`` whole or not at all: a short write (a full disk) is cut back,
        so the runner never reads half a heredoc block."""
        try:
            append_whole(path, text)
        except OSError as exc:
            self._broken_files.add(variable)
            raise OutputFileError(variable, path, exc.strerror or str(exc)) from exc


def append_whole(path: str, text: str) -> None:
    """Append ``text`` to the file at ``path`` in one piece: on a short write (ENOSPC,
    EDQUOT, EFBIG) the file is truncated back to where it ended, then OSError."""
    data = text.encode("utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.lseek(descriptor, 0, os.SEEK_END)
        written = 0
        try:
            while written < len(data):
                count = os.write(descriptor, data[written:])
                if count <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += count
        except OSError:
            with suppress(OSError):
                os.ftruncate(descriptor, end)
            raise
    finally:
        os.close(descriptor)


def plain_outputs(outputs: Mapping[str, str]) -> str:
    """``name=value`` lines for a terminal; multi-line values indented under ``name=``."""
    lines = []
    for name, value in outputs.items():
        if "\n" in value:
            lines.append(f"{name}=")
            lines.extend(f"  {line}" for line in value.splitlines())
        else:
            lines.append(f"{name}={value}")
    return "".join(line + "\n" for line in lines)


def is_markdown_table(text: str) -> bool:
    """Whether ``text`` is one table as :func:`markdown_table` writes it."""
    lines = text.strip("\n").split("\n")
    return len(lines) >= 2 and all(line.startswith("|") and line.endswith("|")
                                   for line in lines) and _is_table_rule(lines[1])


def _is_table_rule(line: str) -> bool:
    cells = line.strip().removeprefix("|").removesuffix("|").split("|")
    return all(_TABLE_RULE.fullmatch(cell) for cell in cells)


def without_details(markdown: str) -> str:
    """The summary without its ``####`` sections: the tables there (health, services)
    were in the log already when the summary is written."""
    kept, skipping = [], False
    for line in markdown.splitlines():
        if line.startswith(("#### ", "### ", "## ", "# ")):
            skipping = line.startswith("#### ")
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def plain_text(markdown: str) -> str:
    """Our summary Markdown as a terminal shows it: headings as lines, tables as aligned
    columns, links as ``text (url)``; no ``#``, ``|``, ``---``, ``**``, escapes or
    entities (code spans keep their backquotes, as the log lines do)."""
    lines: list[str] = []
    table: list[list[str]] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            if not _is_table_rule(line):
                table.append([_plain_inline(cell.strip().replace("<br>", " / ")) for cell
                              in line.strip().removeprefix("|").removesuffix("|").split("|")])
            continue
        lines.extend(_aligned(table))
        table = []
        lines.append(_plain_inline(_HEADING.sub("", line)))
    lines.extend(_aligned(table))
    return "\n".join(lines).strip("\n") + "\n"


_TABLE_RULE = re.compile(r"\s*:?-{3,}:?\s*")
_HEADING = re.compile(r"^#{1,6} ")
_LINK = re.compile(r"\[([^\]\n]*)\]\(([^)\s]*)\)")
_ESCAPED = re.compile(r"\\([\\`*_{}\[\]()#+!~])")


def _plain_inline(text: str) -> str:
    text = _LINK.sub(r"\1 (\2)", text).replace("**", "")
    return html.unescape(_ESCAPED.sub(r"\1", text))


def _aligned(rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows)
              for i in range(max(len(row) for row in rows))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            .rstrip() for row in rows]


def markdown_text(value: str) -> str:
    """Text from outside as inert markdown on one line: no HTML, link, emphasis or code."""
    text = html.escape(" ".join(value.splitlines()), quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def markdown_cell(text: str) -> str:
    """A table cell that stays one cell: no column break, no row break, no HTML tag.

    Our own markdown (e.g. a `code` span) survives; text from outside goes through
    :func:`markdown_text` first.
    """
    # GFM splits cells before it reads escapes or code spans: an entity never splits.
    text = text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "&#124;")
    return "<br>".join(text.splitlines())


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(markdown_cell(h) for h in headers) + " |"]
    lines.append("|" + "|".join(" --- " for _ in headers) + "|")
    lines.extend("| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)
