"""TLS for ``bits-wsgi serve``: the server's context, and a client certificate as an identity.

``--certfile``/``--keyfile`` turn TLS on for every engine; ``--client-ca FILE`` makes every
client present a certificate signed by that authority, as IIS can require of machines, and the
certificate's subject common name becomes the identity (``REMOTE_USER``) that owns the
client's sessions (PROTOCOL.md §9.1). TLS 1.2 is the floor: Windows 7 and Server 2008 R2 speak
it, and nothing older should be trusted.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


def server_context(certfile: str, keyfile: str | None, client_ca: str | None) -> ssl.SSLContext:
    """The context every connection is wrapped in; a file that cannot be used is a ValueError
    naming it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use --certfile {certfile} / --keyfile {keyfile}: {exc}") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot use --client-ca {client_ca}: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def certificate_identity(certificate: dict[str, Any] | None) -> str | None:
    """The subject's common name of a verified peer certificate (``getpeercert()``)."""
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    return None


class ClientCertificateIdentity:
    """For gunicorn, which verifies client certificates but tells the application nothing of
    them: ``REMOTE_USER`` from the certificate of the connection (``gunicorn.socket``)."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        connection = environ.get("gunicorn.socket")
        if isinstance(connection, ssl.SSLSocket):
            identity = certificate_identity(connection.getpeercert())
            if identity:
                environ["REMOTE_USER"] = identity
        return self.app(environ, start_response)
