"""A fake `codex` CLI that prints recorded codex JSON lines (see _fake.py)."""

from _fake import main  # type: ignore[import-not-found]

main("codex")
