"""A fake `claude` CLI that prints recorded claude JSON lines (see _fake.py)."""

from _fake import main  # type: ignore[import-not-found]

main("claude")
