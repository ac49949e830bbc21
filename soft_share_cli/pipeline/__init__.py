"""One module per command: each returns result dataclasses for the CLI to render."""
