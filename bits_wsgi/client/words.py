"""The server's error Acks in words: the HRESULT's name and the likely cause, for a person."""

from __future__ import annotations

from ..errors import (
    BG_E_SESSION_NOT_FOUND,
    BG_E_TOO_LARGE,
    CONTEXT_APPLICATION,
    E_ACCESSDENIED,
    E_DISK_FULL,
    E_FILE_NOT_FOUND,
    E_INVALIDARG,
)
from .acks import ReceivedAck

HRESULT_NAMES = {
    E_INVALIDARG: "E_INVALIDARG",
    E_ACCESSDENIED: "E_ACCESSDENIED",
    E_FILE_NOT_FOUND: "ERROR_FILE_NOT_FOUND",
    E_DISK_FULL: "ERROR_DISK_FULL",
    BG_E_SESSION_NOT_FOUND: "BG_E_SESSION_NOT_FOUND",
    BG_E_TOO_LARGE: "BG_E_TOO_LARGE",
}

_HTTP_ERROR_BASE = 0x80190000


def hresult_name(code: int) -> str:
    if code in HRESULT_NAMES:
        return HRESULT_NAMES[code]
    if _HTTP_ERROR_BASE < code < _HTTP_ERROR_BASE + 600:
        return f"BG_E_HTTP_ERROR_{code - _HTTP_ERROR_BASE}"
    return "an unknown HRESULT"


def _code(ack: ReceivedAck) -> int | None:
    try:
        return int(ack.error, 16)
    except ValueError:
        return None


def _context(ack: ReceivedAck) -> int | None:
    try:
        return int(ack.get("BITS-Error-Context") or "", 16)
    except ValueError:
        return None


def likely_cause(packet_type: str, ack: ReceivedAck) -> str:
    """What most likely went wrong, as the operator or the user can act on it."""
    status, code = ack.status, _code(ack)
    if ack.get("BITS-Packet-Type") != "Ack":
        return "the answer is not the BITS server's (a proxy, or no BITS server at this URL)"
    if _context(ack) == CONTEXT_APPLICATION:
        return f"the server application answered {status}"
    if status == 501:
        return "no upload directory at this URL: the server takes no BITS uploads here"
    if status == 401:
        return "the server wants credentials (--user NAME:PASSWORD), or refused these"
    if status == 403 and packet_type == "Create-Session":
        return "the destination exists and the server does not overwrite"
    if status == 403 and packet_type == "Fragment":
        return (
            "the server refused the upload (its scan refused the content, or the destination "
            "appeared meanwhile), or this session belongs to other credentials"
        )
    if status == 403:
        return "the server refuses this session to these credentials"
    if code == E_DISK_FULL:
        return "the server's disk is full"
    if code == BG_E_SESSION_NOT_FOUND:
        return "the server no longer knows this session (expired, or removed)"
    if code == BG_E_TOO_LARGE:
        return "the file is larger than the server accepts"
    if status == 404:
        return "the server lost the uploaded data before it could keep it"
    if status == 400:
        return "the server found the request invalid"
    if status == 503:
        return "the server is busy"
    if status >= 500:
        return "the server failed; its log says why"
    return f"the server answered {status}"


def in_words(packet_type: str, ack: ReceivedAck) -> str:
    """``403 0x80070005 (E_ACCESSDENIED): the destination exists and …``"""
    code = _code(ack)
    if code is None:
        return f"{ack.status}: {likely_cause(packet_type, ack)}"
    return f"{ack.status} {ack.error} ({hresult_name(code)}): {likely_cause(packet_type, ack)}"


def reason(exc: BaseException) -> str:
    """A failed attempt in words: the Ack's, or the network error's without its errno."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
