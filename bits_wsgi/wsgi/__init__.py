"""The WSGI layer: the middleware and what only it knows of (environ, request bodies, responses,
Basic authentication, the packet log line, metrics, the in-process notification target)."""

from .auth import BasicAuth
from .middleware import BITSMiddleware

__all__ = ["BITSMiddleware", "BasicAuth"]
