#!/usr/bin/env python3
"""Entry point of the deploykit action container: the same code path as the CLI.

With no arguments (how GitHub and act start a container action) it runs the action: the
mode and every input come from ``INPUT_*``. With arguments (``docker run <image> --help``,
``docker run <image> tags --image-repo org/app``) they go to the ``deploykit`` CLI.
"""

import sys

from deploykit.cli import exit_process, main, run_action

if __name__ == "__main__":
    arguments = sys.argv[1:]
    exit_process(main(arguments) if arguments else run_action())
