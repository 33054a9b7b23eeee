from deploykit.cli import run

run()
