"""A real MIT Kerberos realm for the Negotiate tests: Debian's krb5kdc on 127.0.0.1, made and
removed by the k5test package, with an ``HTTP/localhost`` service keytab and client principals
whose tickets sit in ccache files of their own."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .ports import free_port

REALM = "KRBTEST.COM"
SERVICE = f"HTTP/localhost@{REALM}"


@dataclass
class Realm:
    k5: Any
    keytab: Path
    env: dict[str, str]

    def principal(self, name: str, password: str = "pw-of-a-test") -> str:
        """A client principal ``name@REALM`` with a ticket in its own ccache; its path."""
        principal = f"{name}@{REALM}"
        # kadmin.local splits its query at spaces only (k5test's addprinc would quote a "$")
        self.k5.run_kadminl(f"addprinc -pw {password} {principal}")
        ccache = Path(self.k5.tmpdir) / f"ccache-{name.replace('$', '_')}"
        self.k5.kinit(principal, password, flags=["-c", str(ccache)])
        return str(ccache)

    def client_env(self, ccache: str) -> dict[str, str]:
        return {**self.env, "KRB5CCNAME": f"FILE:{ccache}"}

    def stop(self) -> None:
        self.k5.stop()


def kerberos_realm() -> Iterator[Realm]:
    """For a fixture: skips where pyspnego's Kerberos or Debian's KDC is not installed, except
    in CI, which installs both (.ci/run) and fails rather than skip the Negotiate tests."""
    missing = []
    if importlib.util.find_spec("gssapi") is None or importlib.util.find_spec("k5test") is None:
        missing.append("the [negotiate] extra and k5test (pip; GSSAPI builds with libkrb5-dev)")
    if not (shutil.which("krb5kdc") or os.path.exists("/usr/sbin/krb5kdc")):
        missing.append("Debian's MIT KDC (apt-get install krb5-kdc krb5-admin-server)")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs {' and '.join(missing)} (.ci/run); missing")
        pytest.skip(f"not installed here: {' and '.join(missing)}")
    import k5test

    loopback = {"kdc_listen": "127.0.0.1:$port0", "kdc_tcp_listen": "127.0.0.1:$port0"}
    k5 = k5test.K5Realm(
        realm=REALM,
        portbase=free_port(),
        kdc_conf={"realms": {"$realm": loopback}},
        # one second of clock skew, so that an expired ticket is refused within a test's wait
        krb5_conf={
            "libdefaults": {
                "rdns": "false",
                "dns_canonicalize_hostname": "false",
                "clockskew": "1",
            }
        },
        start_kadmind=False,
        get_creds=False,
    )
    try:
        k5.addprinc(SERVICE)
        keytab = Path(k5.tmpdir) / "http.keytab"
        k5.extract_keytab(SERVICE, str(keytab))
        env = {key: value for key, value in k5.env.items() if key.startswith("KRB5")}
        yield Realm(k5=k5, keytab=keytab, env=env)
    finally:
        k5.stop()
