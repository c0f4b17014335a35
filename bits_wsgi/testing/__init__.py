"""Contract suites for backends and their parts, as pytest classes any implementation can run.

Every backend is records + blobs + a locker (``bits_wsgi.backends.ComposedBackend``); each part
has its suite, and :class:`BackendContract` checks a whole backend end to end. Subclass one in a
test module and say how to build what it tests::

    from bits_wsgi.testing import BackendContract, BlobStoreContract

    class TestMyBlobs(BlobStoreContract):
        def make_blobs(self, root):
            return MyBlobStore(root / "blobs")

    class TestMyBackend(BackendContract):
        def make_backend(self, root):
            return ComposedBackend(records=..., blobs=MyBlobStore(root / "blobs"), locker=...)

Requires pytest (the ``test`` extra).
"""

from .backend import BackendContract
from .blobs import BlobStoreContract
from .ledgers import OutboxContract, UsageLedgerContract
from .locks import LockerContract
from .records import RecordStoreContract
from .values import DESTINATION, SESSION_A, SESSION_B, new_record

__all__ = [
    "DESTINATION",
    "SESSION_A",
    "SESSION_B",
    "BackendContract",
    "BlobStoreContract",
    "LockerContract",
    "OutboxContract",
    "RecordStoreContract",
    "UsageLedgerContract",
    "new_record",
]
