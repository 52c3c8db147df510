"""Runtime backends behind one interface (:class:`Backend`)."""

from .base import Backend, BackendSpec
from .registry import ALL_BACKENDS, create_backend, parse_backends

__all__ = ["ALL_BACKENDS", "Backend", "BackendSpec", "create_backend", "parse_backends"]
