"""The proxy variant of Windows Integrated Authentication, for real: Debian's Apache httpd with
mod_auth_gssapi and examples/apache-negotiate.conf in front of `bits-wsgi serve
--identity-header`, a MIT KDC on 127.0.0.1, and a client that spoofs the header."""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bits_wsgi.protocol import PROTOCOL_GUID

from ..support.kerberos import REALM, Realm, kerberos_realm
from ..support.ports import free_port
from .helpers import PROJECT, RawBits, Server, bits_serve, owners

pytestmark = pytest.mark.integration

MODULES = Path("/usr/lib/apache2/modules")
LOADED = [
    "mpm_event",
    "authn_core",
    "authz_core",
    "authz_user",
    "auth_gssapi",
    "proxy",
    "proxy_http",
    "headers",
]


def apache() -> str:
    binary = shutil.which("apache2") or "/usr/sbin/apache2"
    if not Path(binary).exists() or not (MODULES / "mod_auth_gssapi.so").exists():
        if os.environ.get("CI"):
            pytest.fail("CI installs apache2 and libapache2-mod-auth-gssapi (.ci/run)")
        pytest.skip("Debian's apache2 and libapache2-mod-auth-gssapi are not installed here")
    return binary


@pytest.fixture(scope="module")
def realm() -> Iterator[Realm]:
    yield from kerberos_realm()


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """Apache's workers run as www-data: their files must be readable by it (test keys only)."""
    folder = Path(tempfile.mkdtemp(prefix="bits-apache-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_apache(folder: Path, realm: Realm, port: int, backend: int) -> Server:
    binary = apache()
    keytab = folder / "http.keytab"
    shutil.copyfile(realm.keytab, keytab)
    krb5_conf = folder / "krb5.conf"
    shutil.copyfile(realm.env["KRB5_CONFIG"], krb5_conf)
    for path in (keytab, krb5_conf):
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    for name in ("logs", "rcache"):
        (folder / name).mkdir()
        (folder / name).chmod(0o777)
    site = (PROJECT / "examples" / "apache-negotiate.conf").read_text()
    for old, new in {
        "Listen 8080": f"Listen 127.0.0.1:{port}",
        "<VirtualHost *:8080>": f"<VirtualHost 127.0.0.1:{port}>",
        "ServerName bits.example.com": "ServerName localhost",
        "/etc/apache2/http.keytab": str(keytab),
        "http://127.0.0.1:8000/": f"http://127.0.0.1:{backend}/",
    }.items():
        assert old in site, old
        site = site.replace(old, new)
    (folder / "bits.conf").write_text(site)
    modules = "\n".join(f"LoadModule {name}_module {MODULES}/mod_{name}.so" for name in LOADED)
    (folder / "httpd.conf").write_text(
        f"""
ServerRoot {folder}
ServerName localhost
PidFile {folder}/httpd.pid
ErrorLog {folder}/logs/error.log
LogLevel warn
User www-data
Group www-data
{modules}
Include {folder}/bits.conf
"""
    )
    env = {"KRB5_CONFIG": str(krb5_conf), "KRB5RCACHEDIR": str(folder / "rcache")}
    command = [binary, "-f", str(folder / "httpd.conf"), "-DFOREGROUND"]
    return Server(command, port, folder / "out.log", env=env)


def kerberos(realm: Realm, ccache: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import spnego

    for key, value in realm.client_env(ccache).items():
        monkeypatch.setenv(key, value)
    context = spnego.client(hostname="localhost", service="HTTP", protocol="kerberos")
    return "Negotiate " + base64.b64encode(context.step()).decode()


def test_apache_authenticates_and_the_server_believes_only_apache(
    tmp_path: Path, realm: Realm, public_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    carol = realm.principal("carol")
    root = tmp_path / "root"
    data = os.urandom(200_000)
    backend = free_port()
    with bits_serve(
        root, tmp_path / "server.log", "--identity-header", "X-Remote-User", port=backend
    ):
        proxy = start_apache(public_dir, realm, free_port(), backend)
        try:
            client = RawBits(proxy.port, "/fleet/carol.bin")
            client.auth = kerberos(realm, carol, monkeypatch)
            assert client.post("Ping").status == 200
            client.auth = None
            # connection-bound: the packets after the Ping carry no Authorization
            assert client.create().status == 200
            assert client.upload_from(data, 0, 64_000) == len(data)
            assert client.close().status == 200

            # a client's own X-Remote-User does not get through Apache
            spoofing = RawBits(proxy.port, "/fleet/claimed.bin")
            spoofing.auth = kerberos(realm, carol, monkeypatch)
            assert spoofing.post("Ping").status == 200
            spoofing.auth = None
            created = spoofing.post(
                "Create-Session",
                {"BITS-Supported-Protocols": PROTOCOL_GUID, "X-Remote-User": "administrator"},
            )
            assert created.status == 200

            # without the handshake, Apache itself refuses
            assert RawBits(proxy.port, "/fleet/anon.bin").create().status == 401
        finally:
            proxy.stop()

        # straight to the server from an address that is no proxy: the header is ignored
        direct = http.client.HTTPConnection(
            "127.0.0.1", backend, timeout=30, source_address=("127.0.0.2", 0)
        )
        direct.request(
            "BITS_POST",
            "/fleet/direct.bin",
            headers={
                "BITS-Packet-Type": "Create-Session",
                "BITS-Supported-Protocols": PROTOCOL_GUID,
                "Content-Length": "0",
                "X-Remote-User": f"carol@{REALM}",
            },
        )
        refused = direct.getresponse()
        refused.read()
        direct.close()
        assert refused.status == 401

    assert (root / "fleet" / "carol.bin").read_bytes() == data
    assert owners(root) == {
        "fleet/carol.bin": f"carol@{REALM}",
        "fleet/claimed.bin": f"carol@{REALM}",
    }
