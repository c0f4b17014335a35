"""Negotiate (Kerberos) for the client, as a Windows BITS job does it: once per connection.

MC-BUP §2.2.4: "The client SHOULD also send [a Ping] when a new TCP session to the server is
established if a connection-oriented HTTP authentication scheme such as NTLM is expected." So
each new connection starts with a body-less Ping that carries the handshake (RFC 4559); the
packets after it on that connection carry no ``Authorization``, and the server keeps the
identity for the connection. The server's token in its 200 is checked (mutual
authentication): a server that cannot prove it holds the service key gets no upload.

Credentials are the user's Kerberos ticket cache (``kinit``; ``KRB5CCNAME``) or a client keytab
(``KRB5_CLIENT_KTNAME``), found by GSSAPI; needs ``pip install 'bits-wsgi[negotiate]'``.
"""

from __future__ import annotations

import base64
import binascii
import http.client
from typing import Any

from .errors import UploadError

#: Round trips a handshake may take: Kerberos needs one, NTLM two.
MAX_LEGS = 4


class Negotiator:
    def __init__(self, service: str = "HTTP") -> None:
        try:
            import spnego
        except ImportError as exc:
            raise UploadError("--negotiate needs pip install 'bits-wsgi[negotiate]'") from exc
        self._spnego = spnego
        self.service = service

    def header(self, host: str) -> str:
        """A fresh ``Authorization`` value for one request to ``host`` (Kerberos needs one leg):
        for servers that close the connection after each response, where no identity can
        outlive its request."""
        try:
            context: Any = self._spnego.client(
                hostname=host, service=self.service, protocol="kerberos"
            )
            return "Negotiate " + base64.b64encode(context.step()).decode("ascii")
        except Exception as exc:
            raise UploadError(f"Kerberos: no credentials for {self.service}/{host}: {exc}") from exc

    def authenticate(self, connection: http.client.HTTPConnection, target: str) -> bool:
        """The handshake on a new ``connection``, on a Ping to ``target``; ``UploadError`` in
        words if it fails. False if the server closes the connection after it: its identity
        then cannot serve the packets that follow, which must carry their own (:meth:`header`)."""
        try:
            context: Any = self._spnego.client(
                hostname=connection.host, service=self.service, protocol="kerberos"
            )
            token = context.step()
        except Exception as exc:  # no ticket, no KDC, no such service principal
            raise UploadError(
                f"Kerberos: no credentials for {self._spn(connection)}: {exc}"
            ) from exc
        for _ in range(MAX_LEGS):
            connection.request(
                "BITS_POST",
                target,
                headers={
                    "BITS-Packet-Type": "Ping",
                    "Content-Length": "0",
                    "User-Agent": "bits_wsgi client",
                    "Authorization": "Negotiate " + base64.b64encode(token).decode("ascii"),
                },
            )
            response = connection.getresponse()
            response.read()
            answer = _token(response.getheader("WWW-Authenticate"))
            if response.status == 200:
                self._check_server(context, answer, connection)
                return not response.will_close
            if response.status != 401 or answer is None:
                raise UploadError(
                    f"Negotiate with {self._spn(connection)} refused: HTTP {response.status}"
                    f" {response.reason}"
                )
            try:
                token = context.step(answer)
            except Exception as exc:
                raise UploadError(f"Negotiate with {self._spn(connection)} failed: {exc}") from exc
        raise UploadError(f"Negotiate with {self._spn(connection)} did not complete")

    def _check_server(self, context: Any, answer: bytes | None, connection: Any) -> None:
        if not context.complete:
            if answer is None:
                raise UploadError(f"{self._spn(connection)} accepted without proving its identity")
            try:
                context.step(answer)
            except Exception as exc:
                raise UploadError(
                    f"{self._spn(connection)} failed to prove its identity: {exc}"
                ) from exc
        if not context.complete:
            raise UploadError(f"{self._spn(connection)} did not prove its identity")

    def _spn(self, connection: http.client.HTTPConnection) -> str:
        return f"{self.service}/{connection.host}"


def _token(header: str | None) -> bytes | None:
    """The token of ``WWW-Authenticate: Negotiate <base64>``, if there is one."""
    scheme, _, data = (header or "").strip().partition(" ")
    if scheme.lower() != "negotiate" or not data.strip():
        return None
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (ValueError, binascii.Error):
        return None
