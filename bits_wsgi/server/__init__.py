"""The upload server below WSGI: packets in, Acks out (``UploadServer``), and its helpers."""

from .core import UploadServer
from .replies import ReplyUnavailable, RequestInfo

__all__ = ["ReplyUnavailable", "RequestInfo", "UploadServer"]
