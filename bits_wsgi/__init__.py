"""bits_wsgi: Microsoft BITS uploads for any WSGI application."""

from .backends import Backend, FilesystemBackend, MemoryBackend
from .config import UploadDirectory
from .errors import BITSError
from .server import RequestInfo, UploadServer
from .webhooks import Webhooks
from .wsgi import BasicAuth, BITSMiddleware, NegotiateAuth, ProxyIdentity

__all__ = [
    "BITSError",
    "BITSMiddleware",
    "Backend",
    "BasicAuth",
    "FilesystemBackend",
    "MemoryBackend",
    "NegotiateAuth",
    "ProxyIdentity",
    "RequestInfo",
    "UploadDirectory",
    "UploadServer",
    "Webhooks",
]
