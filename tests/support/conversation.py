"""The packets of a BITS upload, whoever carries them: a WSGI application (``BitsClient`` in
tests/conftest.py) or an UploadServer itself (``ServerClient``)."""

from __future__ import annotations

from typing import Any

from bits_wsgi.protocol import PROTOCOL_GUID


class Conversation:
    """One session's packets, built on ``post``; ``session_id`` is set by a successful Create."""

    session_id: str | None = None

    def post(
        self, packet_type: str, headers: dict[str, str] | None = None, body: bytes = b"", **kw: Any
    ) -> Any:
        raise NotImplementedError

    def create(self, **kw: Any) -> Any:
        headers = {"BITS-Supported-Protocols": PROTOCOL_GUID, **kw.pop("headers", {})}
        response = self.post("Create-Session", headers, **kw)
        if response.status_int == 200:
            self.session_id = response.headers["BITS-Session-Id"]
        return response

    def fragment(
        self, data: bytes, first: int, total: int, session_id: str | None = None, **kw: Any
    ) -> Any:
        last = first + len(data) - 1
        content_range = f"bytes {first}-{last}/{total}" if data else f"bytes */{total}"
        headers = {
            "BITS-Session-Id": session_id or self.session_id or "",
            "Content-Range": content_range,
        }
        headers.update(kw.pop("headers", {}))
        return self.post("Fragment", headers, body=data, **kw)

    def close(self, session_id: str | None = None, **kw: Any) -> Any:
        return self.post(
            "Close-Session", {"BITS-Session-Id": session_id or self.session_id or ""}, **kw
        )

    def cancel(self, session_id: str | None = None, **kw: Any) -> Any:
        return self.post(
            "Cancel-Session", {"BITS-Session-Id": session_id or self.session_id or ""}, **kw
        )

    def upload(self, data: bytes, fragment_size: int = 1000) -> None:
        assert self.create().status_int == 200
        for first in range(0, len(data), fragment_size):
            response = self.fragment(data[first : first + fragment_size], first, len(data))
            assert response.status_int == 200, response.headers
        if not data:
            assert self.fragment(b"", 0, 0).status_int == 200
