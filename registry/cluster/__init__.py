"""Several server processes sharing run state: Redis for live runs, a shared database for
the log. See :mod:`registry.cluster.registry`."""

from .engine import EngineUnavailable
from .registry import ClusterRegistry

__all__ = ["ClusterRegistry", "EngineUnavailable"]
