"""The one vocabulary of a run's outcome: the `status` output, history lines, summaries."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A ``str``: written, compared and stored as its value (``"deployed"``)."""

    # mode deploy / rollback
    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    PLANNED = "planned"  # a dry run (also `deploykit tags` and a build dry run)
    # mode build
    BUILT = "built"
    SKIPPED = "skipped"
    VALIDATED = "validated"


__all__ = ["Status"]
