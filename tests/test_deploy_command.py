"""deploy_command: the compose config starts before the deploy's libraries load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_command_module_loads_neither_the_sdk_nor_requests() -> None:
    """What it imports runs before the config starts: nothing heavy."""
    code = ("import sys, deploykit.deploy_command; "
            "print([m for m in ('docker', 'requests', 'deploykit.deploy') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "[]"
