"""The action's inputs and outputs, one table: ``action.yml``, the CLI flags and the
README's tables are generated from it or checked against it by tests. The mode words
are defined here (and only here); how a text names an input for its reader too."""

from __future__ import annotations

import re
from dataclasses import dataclass

BOOL_VALUES = ("true", "false")

BUILD, DEPLOY, ROLLBACK = "build", "deploy", "rollback"  # the modes; nowhere else
MODES = (BUILD, DEPLOY, ROLLBACK)
DAY_SECONDS = 86400  # upper bound of every timeout: a day is more than any deploy waits
KEEP_IMAGES_MAX = 20  # a bound; the engine's labels remember 20 releases below the current

RUN = (DEPLOY, ROLLBACK)


@dataclass(frozen=True)
class InputSpec:
    name: str
    description: str
    default: str = ""
    kind: str = "str"  # str | bool | int | choice | lines | secret
    choices: tuple[str, ...] = ()
    modes: tuple[str, ...] = MODES
    required: bool = False
    minimum: int = 0  # kind int: the accepted range
    maximum: int = 0
    cli_flag: str = ""  # the CLI flag when it differs from the input name
    max_length: int = 0  # characters; 0: the kind's (MAX_LENGTHS)

    @property
    def flag(self) -> str:
        return "--" + (self.cli_flag or self.name.replace("_", "-"))

    @property
    def length_limit(self) -> int:
        return self.max_length or MAX_LENGTHS.get(self.kind, MAX_LENGTHS["str"])

    @property
    def kebab(self) -> str:
        """The spelling action.yml does not declare: ``dry-run`` for ``dry_run``."""
        return self.name.replace("_", "-")


# Every value is bounded before it is parsed: a 100 kB value must never reach a regex or
# the log. Multi-line inputs (compose_env: a whole .env; a GitHub secret holds at most
# 48 kB) get the most, a path or a name (PATH_MAX is 4096) far less.
MAX_LENGTHS = {"lines": 65536, "secret": 65536, "str": 4096, "int": 4096, "bool": 4096,
               "choice": 4096}


INPUTS: tuple[InputSpec, ...] = (
    InputSpec("mode", "What to do: `build` (build and push), `deploy` (pull + up), "
              "`rollback` (deploy the previous image).", kind="choice", choices=MODES,
              required=True),
    InputSpec("registry", "Registry host and optional port, no scheme: `ghcr.io`, "
              "`127.0.0.1:5000`, `[::1]:5000`.", "ghcr.io"),
    InputSpec("image_repo", "Repository in the registry, `<org>/<app>`. "
              "Default: `GITHUB_REPOSITORY`, lower-cased; on a terminal without it, the "
              "`<owner>/<repo>` of the checkout's `origin` remote."),
    InputSpec("registry_username", "User for the registry login. Default: `GITHUB_ACTOR`."),
    InputSpec("registry_password", "Registry token, e.g. the `GHCR_PAT` secret "
              "(`write:packages` to build, `read:packages` to deploy).", kind="secret"),
    InputSpec("image_tag", "Tag (or `sha256:` digest, or `tag@sha256:...`) to deploy. "
              "Production takes only `vX.Y.Z` or a digest.", modes=RUN),
    InputSpec("environment", "Target environment, e.g. `staging` or `production` (letters, "
              "digits, `.`, `_`, `-`).", modes=RUN),
    InputSpec("production_environments", "Comma-separated environment names that count as "
              "production.", "production,prod", modes=RUN),
    InputSpec("version", "Release version `X.Y.Z` (with or without `v`) for builds from the "
              "`release` branch (CLI: `--release-version`).", modes=(BUILD,),
              cli_flag="release-version"),
    InputSpec("platforms", "Comma-separated platforms to build.", "linux/amd64,linux/arm64",
              modes=(BUILD,)),
    InputSpec("context", "Build context, relative to the workspace (in Actions: inside it).",
              ".", modes=(BUILD,)),
    InputSpec("dockerfile", "Dockerfile path, relative to the workspace (in Actions: inside "
              "it). Default: `Dockerfile` in the context.", modes=(BUILD,)),
    InputSpec("target", "Build stage to build (`--target`).", modes=(BUILD,)),
    InputSpec("build_args", "Build arguments, one `KEY=VALUE` a line.", kind="lines",
              modes=(BUILD,)),
    InputSpec("build_secrets", "Build secrets taken from the environment, one `id` or "
              "`id=ENV_VAR` a line (mounted with `RUN --mount=type=secret`, never build args).",
              kind="lines", modes=(BUILD,)),
    InputSpec("cache", "Build cache: `registry` (`<image>:buildcache`, mode=max), `gha`, or "
              "`none`.", "registry", kind="choice", choices=("registry", "gha", "none"),
              modes=(BUILD,)),
    InputSpec("provenance", "Attach a provenance attestation.", "false", kind="bool",
              modes=(BUILD,)),
    InputSpec("sbom", "Attach an SBOM attestation.", "false", kind="bool", modes=(BUILD,)),
    InputSpec("latest", "Add the `latest` co-tag on releases: `auto` (only for the highest "
              "non-pre-release version), `true`, `false`.", "auto", kind="choice",
              choices=("auto", "true", "false"), modes=(BUILD,)),
    InputSpec("skip_build_if_image_present", "When a write-once tag already exists (from "
              "another revision), skip the build and output its digest instead of failing.",
              "false", kind="bool", modes=(BUILD,)),
    InputSpec("force_redeploy", "Recreate the containers even when nothing changed.", "false",
              kind="bool", modes=RUN),
    InputSpec("dry_run", "Plan only: print what would happen, change nothing.", "false",
              kind="bool"),
    InputSpec("compose_file", "Compose file. Default: `compose.yaml`, then "
              "`docker-compose.yml`, in `project_dir` (in Actions: inside the workspace).",
              modes=RUN),
    InputSpec("project_dir", "Directory of the compose project, relative to the workspace "
              "(in Actions: inside it).", ".", modes=RUN),
    InputSpec("project_name", "Compose project name: lower-case letters, digits, `-` and `_`, "
              "starting with a letter or digit, at most 63 characters. Default: compose's own "
              "(the directory name).", modes=RUN),
    InputSpec("orchestrator", "`compose` (`docker compose pull` + `up` on one engine) or "
              "`swarm` (`docker stack deploy` to a Swarm manager, rolling updates; see "
              "docs/swarm.md).", "compose", kind="choice", choices=("compose", "swarm"),
              modes=RUN),
    InputSpec("compose_env", "Environment for the services, one `KEY=VALUE` a line (e.g. the "
              "`COMPOSE_ENV` secret). Masked: values of secret-like keys (`*PASSWORD*`, "
              "`*TOKEN*`, `*SECRET*`, `*KEY*`...), values of 12+ characters, URL credentials.",
              kind="secret", modes=RUN),
    InputSpec("health_timeout", "Seconds for every container to become healthy (1 to 86400).",
              "120", kind="int", modes=RUN, minimum=1, maximum=DAY_SECONDS),
    InputSpec("health_settle", "Seconds every container must run with no restart, from its "
              "own start, healthy if it has a healthcheck (0 to 3600).", "5", kind="int",
              modes=RUN, maximum=3600),
    InputSpec("smoke_url", "`http://` or `https://` URL(s) that must answer after the "
              "deploy, one a line.",
              kind="lines", modes=RUN),
    InputSpec("smoke_status", "HTTP status the smoke URLs must answer (100 to 599).", "200",
              kind="int", modes=RUN, minimum=100, maximum=599),
    InputSpec("smoke_contains", "Text the smoke responses must contain.", modes=RUN),
    InputSpec("smoke_timeout", "Seconds to keep retrying the smoke test (0 to 86400).", "60",
              kind="int", modes=RUN, maximum=DAY_SECONDS),
    InputSpec("rollback_on_failure", "Bring back the previous images when the deploy fails.",
              "true", kind="bool", modes=RUN),
    InputSpec("lock_timeout", "Seconds to wait for another deploy of the same project "
              "(0 to 86400).", "600", kind="int", modes=RUN, maximum=DAY_SECONDS),
    InputSpec("state_dir", "Directory of the deploy history. Default: "
              "`$DEPLOYKIT_STATE_DIR`, else `~/.local/state/deploykit`.", modes=RUN),
    InputSpec("github_token", "Token for GitHub deployments and releases (optional).",
              kind="secret"),
    InputSpec("github_records", "`best_effort`: a GitHub API failure is a warning; "
              "`required`: it fails the run.", "best_effort", kind="choice",
              choices=("best_effort", "required")),
    InputSpec("summary", "Write the job summary (`GITHUB_STEP_SUMMARY`; on a terminal, the "
              "summary printed to stderr).", "true", kind="bool"),
    InputSpec("environment_url", "`http(s)://` URL shown on the GitHub deployment, without "
              "credentials. Default: the first `smoke_url`, without its credentials.",
              modes=RUN),
    InputSpec("verify_provenance", "Before any pull, verify the image's GitHub build "
              "provenance attestation (Sigstore): built by `provenance_repository`'s workflow "
              "from the tag `vX.Y.Z` (any tag for a digest). Recommended for production; "
              "see docs/provenance.md.", "false", kind="bool", modes=RUN),
    InputSpec("trusted_root", "File of Sigstore trusted roots, one JSON a line (`gh "
              "attestation trusted-root`), all tried. Default: the public-good root, "
              "updated over the network.", modes=RUN),
    InputSpec("provenance_repository", "Repository whose workflows must have built the "
              "image, `<owner>/<repo>`. Default: `GITHUB_REPOSITORY`.", modes=RUN),
    InputSpec("keep_images", "After a verified deploy, remove this repository's images "
              "that no container uses, but those of the N most recent releases (the "
              "running one included: a rollback pulls nothing); `0` keeps every image "
              "(0 to 20).", "5", kind="int", modes=(DEPLOY,), maximum=KEEP_IMAGES_MAX),
)

OUTPUTS: dict[str, str] = {
    "digest": "Index digest of the image built or deployed (`sha256:...`).",
    "image": "Pinned image reference, `registry/repo@sha256:...`.",
    "tags": "Tags published, bare names (one a line): `v1.4.2`.",
    "images": "The same tags as full references (one a line): `ghcr.io/org/app:v1.4.2`.",
    "metadata": "JSON (build): `image`, `digest` (the index), `tags` (each `{tag, "
                "reference}`), `platforms` (platform -> manifest digest), `labels` (the image "
                "config's), `status`.",
    "version": "Release version (`vX.Y.Z`) when there is one.",
    "platforms": "JSON object: platform -> manifest digest.",
    "status": "`built`, `skipped`, `validated`, `deployed`, `rolled_back`, `failed` or "
              "`planned`.",
    "previous_image": "Image that ran before the deploy (the rollback target).",
    "duration_seconds": "Wall time of the run in seconds.",
}

SPECS = {spec.name: spec for spec in INPUTS}


# -- naming an input for the context: `image_repo:` in a workflow, --image-repo on a terminal
_INPUT_NAMES = "|".join(sorted(SPECS, key=len, reverse=True))
# `name` or `name: value` in backticks (messages and hints write inputs the workflow way)
_QUOTED_INPUT_RE = re.compile(rf"`({_INPUT_NAMES})(?:: ([^`\n]*))?`")
_INPUT_LEAD_RE = re.compile(rf"\bInput '({_INPUT_NAMES})'")
_TITLE_RE = re.compile(r"^(Invalid inputs?: )(.*)$")
_VALUE_NAMES = frozenset({"latest"})  # bare `latest` in a text is the tag, not the input


def terminal_name(name: str, flags: frozenset[str]) -> str:
    """How a terminal user sets input ``name``: its flag when the command has it, else
    its ``INPUT_*`` variable (secrets, inputs of other commands)."""
    if name == "mode":
        return "the command"
    spec = SPECS.get(name)
    if spec is None:
        return name
    return spec.flag if name in flags else f"INPUT_{name.upper()}"


def for_terminal(text: str, flags: frozenset[str]) -> str:
    """``text`` (a message, hint or title written for a workflow) with every input named
    the way a terminal sets it: `image_repo: <org>/<app>` becomes `--image-repo <org>/<app>`
    and `registry_password` becomes `INPUT_REGISTRY_PASSWORD`."""
    def quoted(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if value is None:
            if name in _VALUE_NAMES:
                return match.group(0)
            return f"`{terminal_name(name, flags)}`"
        if name == "mode":
            return f"`deploykit {value}`"
        if name not in flags:
            return f"`INPUT_{name.upper()}={value}`"
        return f"`{SPECS[name].flag} {value}`"

    text = _QUOTED_INPUT_RE.sub(quoted, text)
    text = _INPUT_LEAD_RE.sub(lambda m: terminal_name(m.group(1), flags), text)
    title = _TITLE_RE.match(text)
    if title:
        names = ", ".join(terminal_name(name.strip(), flags) for name in title.group(2)
                          .split(","))
        text = title.group(1) + names
    return text
