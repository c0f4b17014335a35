"""``serve``'s authentication options, and the middleware they put in front of the server:
Basic (``--user``, ``--users-file``), Negotiate (``--auth negotiate``) or the identity an
authenticating proxy passes (``--identity-header``); docs/authentication.md.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..wsgi.auth import BasicAuth, read_users_file
from ..wsgi.proxy_identity import ProxyIdentity

#: Where an authenticating proxy in front is by default: this host.
PROXIES = ("127.0.0.1", "::1")

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


def add_auth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:PASSWORD",
        help="enable HTTP Basic authentication (repeatable); the password shows in `ps`: "
        "prefer --users-file; use TLS in front (default: none, no authentication)",
    )
    parser.add_argument(
        "--users-file",
        default=None,
        metavar="FILE",
        help="enable HTTP Basic authentication for the NAME:HASH lines of FILE, written by "
        "`bits-wsgi passwd FILE NAME` (default: none)",
    )
    parser.add_argument(
        "--auth",
        choices=["negotiate"],
        default=None,
        help="negotiate: Windows Integrated Authentication (Kerberos with --keytab, NTLM with "
        "--ntlm-users), bound to the connection as IIS does; needs bits-wsgi[negotiate] "
        "(default: none, or Basic with --user/--users-file)",
    )
    parser.add_argument(
        "--keytab",
        default=None,
        metavar="FILE",
        help="with --auth negotiate, the keytab holding the service's key, e.g. for "
        "HTTP/host.example.com (default: the system's, KRB5_KTNAME or /etc/krb5.keytab)",
    )
    parser.add_argument(
        "--service",
        default="HTTP",
        help="with --auth negotiate, the Kerberos service name (default: %(default)s)",
    )
    parser.add_argument(
        "--ntlm-users",
        default=None,
        metavar="FILE",
        help="with --auth negotiate, also accept NTLM for the DOMAIN:USER:PASSWORD lines of FILE "
        "(default: Kerberos only)",
    )
    parser.add_argument(
        "--machine-names",
        action="store_true",
        help="with --auth negotiate, a machine account's sessions belong to its plain name: "
        "HOST$@REALM and DOMAIN\\HOST$ become HOST (default: the principal as given)",
    )

    parser.add_argument(
        "--identity-header",
        default=None,
        metavar="NAME",
        help="take the identity from this request header, set by an authenticating proxy in "
        "front (Apache with mod_auth_gssapi: examples/apache-negotiate.conf), believed only "
        "from --trusted-proxy addresses (default: none)",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="with --identity-header, an address or network of the proxy (repeatable; "
        "default: 127.0.0.1 and ::1)",
    )


def with_authentication(app: WSGIApplication, args: argparse.Namespace) -> WSGIApplication:
    """``app`` behind the authentication the arguments ask for, if any."""
    negotiating = getattr(args, "auth", None) == "negotiate"
    header = getattr(args, "identity_header", None)
    chosen = [negotiating, bool(args.user or args.users_file), header is not None]
    if sum(chosen) > 1:
        raise ValueError(
            "--auth negotiate, --user/--users-file and --identity-header exclude each other"
        )
    if getattr(args, "trusted_proxy", None) and header is None:
        raise ValueError("--trusted-proxy needs --identity-header")
    if header is not None:
        try:
            return ProxyIdentity(app, header=header, proxies=args.trusted_proxy or PROXIES)
        except ValueError as exc:
            raise ValueError(f"--trusted-proxy: {exc}") from None
    extras = ("keytab", "ntlm_users", "machine_names")
    if not negotiating and any(getattr(args, name, None) for name in extras):
        raise ValueError("--keytab, --ntlm-users and --machine-names need --auth negotiate")
    if args.user or args.users_file:
        hashed = read_users_file(args.users_file) if args.users_file else None
        app = BasicAuth(app, _parse_users(args.user), hashed=hashed)
    if negotiating:
        app = _negotiate(app, args)
    return app


def _negotiate(app: WSGIApplication, args: argparse.Namespace) -> WSGIApplication:
    for option, path in (("--keytab", args.keytab), ("--ntlm-users", args.ntlm_users)):
        if path is not None and not os.access(path, os.R_OK):
            raise ValueError(f"{option} {path}: not a readable file")
    try:
        from ..wsgi.negotiate import NegotiateAuth

        return NegotiateAuth(
            app,
            keytab=args.keytab,
            ntlm_users=args.ntlm_users,
            service=args.service,
            machine_names=args.machine_names,
        )
    except ImportError as exc:
        raise ValueError("--auth negotiate needs pip install 'bits-wsgi[negotiate]'") from exc


def _parse_users(values: Sequence[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for value in values:
        name, sep, password = value.partition(":")
        if not sep or not name or not password:
            raise ValueError(f"--user takes NAME:PASSWORD, got {value!r}")
        users[name] = password
    return users
