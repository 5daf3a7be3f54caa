"""A fake `gemini` CLI that prints recorded gemini JSON lines (see _fake.py)."""

from _fake import main  # type: ignore[import-not-found]

main("gemini")
