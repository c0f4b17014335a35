"""The BITS upload client (``bits-wsgi upload``): the client side of the protocol, as Windows does
it, for Linux and macOS. It imports only ``protocol`` and ``errors`` of the package.

::

    from bits_wsgi.client import UploadClient

    result = UploadClient("http://server:8000/uploads/dump.bin").upload("dump.bin")
"""

from .errors import UploadError
from .progress import ProgressPrinter, describe
from .upload import DEFAULT_FRAGMENT, Progress, UploadClient, UploadResult

__all__ = [
    "DEFAULT_FRAGMENT",
    "Progress",
    "ProgressPrinter",
    "UploadClient",
    "UploadError",
    "UploadResult",
    "describe",
]
