"""How the client's attempts end: worth another try, or not."""

from __future__ import annotations

import http.client
import os
import ssl


class UploadError(Exception):
    """The upload cannot go on: a fatal Ack, or retries exhausted.

    ``resumable``: whether running the same upload again may continue this session (the
    network or the server was down for longer than the retries); a refused packet is not, and
    the client forgets the session."""

    def __init__(self, message: str, *, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable


class Transient(Exception):
    """Worth retrying: a network error, 503, or a 5xx the client retries (§5.2)."""


def raise_if_final(exc: Exception) -> None:
    """Errors no retry can fix end the upload at once, with what went wrong."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        raise UploadError(
            f"the server's TLS certificate does not verify ({exc.verify_message}): if an "
            "internal authority signed it, pass that authority's certificate with --cacert FILE"
        ) from exc
    if isinstance(exc, http.client.InvalidURL):
        raise UploadError(f"invalid URL: {exc}") from exc


def tls_context(
    cafile: str | os.PathLike[str] | None,
    certfile: str | os.PathLike[str] | None,
    keyfile: str | os.PathLike[str] | None,
) -> ssl.SSLContext:
    """Verification always on: the system's authorities, or those of ``cafile``; a file that
    cannot be used fails at once, in words."""
    try:
        context = ssl.create_default_context(cafile=cafile)
        if certfile is not None:
            context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise UploadError(f"cannot use the TLS files given: {exc}") from exc
    return context
