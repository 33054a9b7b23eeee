#!/usr/bin/env python3
"""Entry point of the deploykit action container: the same code path as the CLI."""

import sys

from deploykit.cli import run_action

if __name__ == "__main__":
    sys.exit(run_action())
