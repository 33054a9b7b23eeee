"""The subcommands at the edge: one module per command, each owning its arguments."""
