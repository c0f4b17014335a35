"""The WSGI layer: the middleware and what only it knows of (environ, request bodies, responses,
authentication, the packet log line, metrics, the in-process notification target)."""

from .auth import BasicAuth
from .middleware import BITSMiddleware
from .negotiate import NegotiateAuth
from .proxy_identity import ProxyIdentity

__all__ = ["BITSMiddleware", "BasicAuth", "NegotiateAuth", "ProxyIdentity"]
