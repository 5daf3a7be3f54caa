"""The store's own exception."""

from __future__ import annotations

from ..errors import RegistryError


class StoreError(RegistryError):
    """The database cannot be used: a bad path, a read-only or foreign file, a newer schema,
    a database that cannot be reached now, or a store that is already closed. The message
    names the file or the URL (never its password). A request that meets it fails with
    ``INTERNAL`` and this message; it may be retried once the database is back."""

    code = "INTERNAL"
