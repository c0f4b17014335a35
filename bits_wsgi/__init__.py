"""bits_wsgi: Microsoft BITS uploads for any WSGI application."""

from .auth import BasicAuth
from .backends import Backend, FilesystemBackend, MemoryBackend
from .config import UploadDirectory
from .errors import BITSError
from .middleware import BITSMiddleware
from .server import RequestInfo, UploadServer

__all__ = [
    "BITSError",
    "BITSMiddleware",
    "Backend",
    "BasicAuth",
    "FilesystemBackend",
    "MemoryBackend",
    "RequestInfo",
    "UploadDirectory",
    "UploadServer",
]
