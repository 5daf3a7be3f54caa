"""The store's own exception."""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used: a bad path, a read-only or foreign file, a newer schema,
    or a store that is already closed. The message names the file."""
