"""``bits-wsgi serve``: the upload server on an embedded HTTP server (its own, waitress,
gunicorn or granian)."""

from __future__ import annotations

import argparse
import atexit
import errno
import logging
import os
import shutil
import socket
import ssl
import sys
import tempfile
from collections.abc import Sequence

from ..wsgi.auth import read_users_file
from ._tls import ClientCertificateIdentity, server_context
from .app import build_app
from .options import directory_from

log = logging.getLogger("bits_wsgi.serve")


#: Requests one worker serves at once, by server: builtin's threads wait on slow bodies and are
#: started only as requests need them; the others' are started up front.
DEFAULT_THREADS = {"builtin": 512}


def serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.server is None:
        args.server = "waitress" if args.certfile else "builtin"  # builtin speaks plain HTTP
    if args.threads is None:
        args.threads = DEFAULT_THREADS.get(args.server, 8)
    if args.metrics_path and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _share_metrics_between_workers()
    app = build_app(args)  # configuration errors surface here, before any server starts
    tls = _tls(args)
    _check_address(args.host, args.port)
    log.info(banner(args))
    if args.server == "granian":
        try:
            from ._granian import serve as serve_granian
        except ImportError:
            print("bits-wsgi: --server granian needs granian: pip install granian", file=sys.stderr)
            return 2
        serve_granian(
            argv,
            host=args.host,
            port=args.port,
            workers=args.workers,
            threads=args.threads,
            certfile=args.certfile,
            keyfile=args.keyfile,
        )
        return 0
    if args.server == "builtin":
        from ._engine import serve as serve_builtin

        serve_builtin(
            app,
            host=args.host,
            port=args.port,
            workers=args.workers,
            threads=args.threads,
            largest_body=directory_from(args, args.root).discard_limit,
        )
        return 0
    if args.server == "waitress":
        try:
            from ._waitress import serve as serve_waitress
        except ImportError:
            print(
                "bits-wsgi: --server waitress needs waitress: pip install waitress", file=sys.stderr
            )
            return 2
        serve_waitress(
            app,
            host=args.host,
            port=args.port,
            workers=args.workers,
            threads=args.threads,
            largest_body=directory_from(args, args.root).discard_limit,
            tls=tls,
        )
        return 0
    try:
        from ._gunicorn import serve
    except ImportError:
        print(
            "bits-wsgi: `serve` runs on gunicorn: pip install 'bits-wsgi[serve]'", file=sys.stderr
        )
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    options: dict[str, object] | None = None
    if tls is not None:
        options = {"certfile": args.certfile, "keyfile": args.keyfile or args.certfile}
        if args.client_ca:
            options |= {"ca_certs": args.client_ca, "cert_reqs": ssl.CERT_REQUIRED}
            app = ClientCertificateIdentity(app)
    serve(app, bind=f"{host}:{args.port}", workers=args.workers, threads=args.threads, tls=options)
    return 0


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS settings checked before any engine starts; None for plain HTTP."""
    if args.certfile is None:
        if args.keyfile or args.client_ca:
            raise ValueError("--keyfile and --client-ca go with --certfile")
        return None
    if args.server == "builtin":
        raise ValueError(
            "--server builtin speaks plain HTTP: serve HTTPS with --server waitress or gunicorn "
            "(the default with --certfile), or behind a proxy that ends TLS"
        )
    if args.client_ca and args.server == "granian":
        raise ValueError(
            "client certificates (--client-ca) need --server waitress or gunicorn: granian "
            "does not tell the application who the client is"
        )
    return server_context(args.certfile, args.keyfile, args.client_ca)


def banner(args: argparse.Namespace) -> str:
    """The start-up line: where uploads go, who may send them, and what runs."""
    directory = directory_from(args, args.root)
    host = f"[{args.host}]" if ":" in args.host else args.host
    scheme = "http" if args.certfile is None else "https"
    who_tls = f"; client certificates from {args.client_ca} required" if args.client_ca else ""
    users = len(args.user) + (len(read_users_file(args.users_file)) if args.users_file else 0)
    if users:
        who = f"Basic authentication ({users} user{'' if users == 1 else 's'})"
    elif args.auth == "negotiate":
        who = negotiate_words(args)
    elif args.identity_header:
        proxies = ", ".join(args.trusted_proxy or ("127.0.0.1", "::1"))
        who = f"the identity in {args.identity_header} from the proxy at {proxies}"
    else:
        who = "no authentication: anyone who reaches this port may upload"
    backend = "files" if args.backend is None else f"redis {args.backend}, data in {args.data_dir}"
    return (
        f"bits-wsgi serve: {scheme}://{host}:{args.port}{directory.prefix} -> "
        f"{os.path.realpath(directory.upload_dir)} (prefix {directory.prefix}); {who}{who_tls}; "
        f"backend: {backend}; {args.server}, {args.workers} workers x {args.threads} threads"
    )


def negotiate_words(args: argparse.Namespace) -> str:
    mechanisms = f"Kerberos ({args.service}, keytab {args.keytab or 'of the system'})"
    if args.ntlm_users:
        mechanisms += f" and NTLM (users in {args.ntlm_users})"
    if args.server == "granian":
        # granian shows the application no connection: no identity can outlive a request.
        return f"Negotiate: {mechanisms}, per request (granian: no connection-bound identity)"
    return f"Negotiate: {mechanisms}, bound to the connection"


def _check_address(host: str, port: int) -> None:
    """Refuse in words an address the server could not listen on, before any engine starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise ValueError(f"{where} is in use: another server listens there (--port)") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"{host} is not an address of this machine (--host)") from None
        if exc.errno == errno.EACCES:
            raise ValueError(f"listening on {where} needs privileges this user lacks") from None
        raise ValueError(f"cannot listen on {where}: {exc.strerror}") from None


def _share_metrics_between_workers() -> None:
    """Every worker counts into files of one directory, and the metrics path sums them; set
    before prometheus_client is first imported, which reads it then."""
    folder = tempfile.mkdtemp(prefix="bits-wsgi-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    server_pid = os.getpid()

    def remove() -> None:
        if os.getpid() == server_pid:  # not when a worker exits
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
