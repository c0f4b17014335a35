"""Errors that become BITS error Acks.

Every failure the client can see is a :class:`BITSError`: an HTTP status, the HRESULT carried in
``BITS-Error-Code``/``BITS-Error`` and the ``BITS-Error-Context``. The subclasses name the cases of
PROTOCOL.md §5.1 so that code raising them reads as the table does.
"""

from __future__ import annotations

# HRESULTs of PROTOCOL.md §5.1.
E_INVALIDARG = 0x80070057
E_ACCESSDENIED = 0x80070005
E_FILE_NOT_FOUND = 0x80070002
E_DISK_FULL = 0x80070070
BG_E_SESSION_NOT_FOUND = 0x8020001F
BG_E_TOO_LARGE = 0x80200020
# 416 carries a zero HRESULT: MC-BUP's value for a resynchronisation, not a failure.
S_RANGE_RESYNC = 0x00000000

#: The server failed (as opposed to the server application, context 0x7).
CONTEXT_SERVER = 0x5
CONTEXT_APPLICATION = 0x7

#: Seconds a client is told to wait after a transient (503) error.
RETRY_AFTER_SECONDS = 60


def http_error_hresult(status: int) -> int:
    """BG_E_HTTP_ERROR_nnn: the default HRESULT for an HTTP status."""
    return 0x80190000 + status


class BITSError(Exception):
    """A failure answered with an error Ack.

    ``received`` is filled in by the server once the session is known, because every Fragment Ack
    carries ``BITS-Received-Content-Range`` (PROTOCOL.md §2.2).
    """

    status: int = 500
    hresult: int | None = None
    context: int = CONTEXT_SERVER

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        hresult: int | None = None,
        context: int | None = None,
        received: int | None = None,
    ) -> None:
        super().__init__(message or type(self).__name__)
        if status is not None:
            self.status = status
        if hresult is not None:
            self.hresult = hresult
        if context is not None:
            self.context = context
        self.received = received

    @property
    def code(self) -> int:
        return self.hresult if self.hresult is not None else http_error_hresult(self.status)

    @property
    def retry_after(self) -> int | None:
        return RETRY_AFTER_SECONDS if self.status == 503 else None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self)!r}, status={self.status}, "
            f"hresult=0x{self.code:08X}, context=0x{self.context:X})"
        )


class InvalidRequest(BITSError):
    """Malformed packet, header, range or destination: 400 E_INVALIDARG."""

    status = 400
    hresult = E_INVALIDARG


class LengthRequired(BITSError):
    """No Content-Length, or a chunked body: 411."""

    status = 411
    hresult = E_INVALIDARG


class NotUploadDirectory(BITSError):
    """BITS request outside every upload directory: 501 (D10)."""

    status = 501
    hresult = E_ACCESSDENIED


class AuthenticationRequired(BITSError):
    """No valid credentials for the server's own Basic authentication: 401."""

    status = 401


class AccessDenied(BITSError):
    """Destination exists with overwrites off, or the session belongs to someone else: 403."""

    status = 403
    hresult = E_ACCESSDENIED


class SessionNotFound(BITSError):
    """Unknown, expired, malformed or closed session: the client restarts from byte 0."""

    status = 500
    hresult = BG_E_SESSION_NOT_FOUND


class UploadTooLarge(BITSError):
    """The declared total exceeds ``max_upload_size``."""

    status = 500
    hresult = BG_E_TOO_LARGE


class FragmentTooLarge(BITSError):
    """The body exceeds ``max_fragment_size``: the client shrinks its fragments."""

    status = 413
    hresult = BG_E_TOO_LARGE


class RangeGap(BITSError):
    """The fragment starts past the bytes held: the client resends from ``received``."""

    status = 416
    hresult = S_RANGE_RESYNC


class ServiceUnavailable(BITSError):
    """Transient: session limit, lock busy, backend unreachable. Never session-not-found."""

    status = 503


class QuotaReached(ServiceUnavailable):
    """The identity stored its bytes for the day: transient, until the next UTC day."""

    def __init__(self, message: str, *, seconds_left: int) -> None:
        super().__init__(message)
        self._seconds_left = seconds_left

    @property
    def retry_after(self) -> int | None:
        return self._seconds_left


class DiskFull(BITSError):
    status = 500
    hresult = E_DISK_FULL


class DataMissing(BITSError):
    """A commit is due but the stored upload is gone."""

    status = 404
    hresult = E_FILE_NOT_FOUND


class InternalError(BITSError):
    """Anything unexpected; logged with its traceback, never sent to the client."""

    status = 500


class ShortBody(Exception):
    """The request body ended before Content-Length bytes: the client went away."""


class LockTimeout(Exception):
    """A session lock could not be taken within ``lock_timeout``."""


class LeaseLost(Exception):
    """The session's lock expired under its holder (a paused VM, a stalled process) and may be
    someone else's now: the holder must not touch the session again (PROTOCOL.md §10.1)."""


class CorruptRecord(Exception):
    """Stored session metadata could not be read back."""


class BackendUnavailable(OSError):
    """The backend's store cannot be reached: transient, answered 503 (never session-not-found)."""


class DestinationExists(Exception):
    """Commit refused: the destination exists and overwrites are off."""
