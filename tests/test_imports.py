"""Start-up cost: the commands load only the heavy libraries they use (issue 13)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("docker", "paramiko", "github")
LOADED = f"""
import sys, importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print(" ".join(name for name in {HEAVY} if name in sys.modules))
"""


@pytest.mark.parametrize(("modules", "loaded"), [
    (["deploykit.cli"], ""),
    (["deploykit.build", "deploykit.plan", "deploykit.registry"], ""),  # build, tags, resolve
    (["deploykit.deploy"], "docker paramiko"),  # the SDK (health, lock) pulls paramiko
])
def test_a_command_imports_only_the_heavy_libraries_it_uses(
        modules: list[str], loaded: str) -> None:
    result = subprocess.run([sys.executable, "-c", LOADED, *modules], check=True,
                            capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == loaded
