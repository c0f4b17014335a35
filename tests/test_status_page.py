"""The operator's status page: what it shows, to whom, and that a client cannot inject into it."""

from __future__ import annotations

from pathlib import Path

import webtest

from bits_wsgi import BasicAuth, BITSMiddleware
from bits_wsgi.wsgi.status import MAX_FAILURES

from .conftest import BitsClient, fallback_app
from .test_auth import basic

LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}


def make(upload_dir: Path, **options: object) -> BITSMiddleware:
    return BITSMiddleware(fallback_app, upload_dir, status_path="/bits-status/", **options)  # type: ignore[arg-type]


def test_an_upload_in_progress_shows_its_bytes_and_percent(upload_dir: Path) -> None:
    app = make(upload_dir)
    client = BitsClient(app, path="/dumps/a.dmp")
    client.create()
    client.fragment(b"x" * 250, 0, 1000)
    done = BitsClient(app, path="/dumps/b.dmp")
    done.upload(b"y" * 10)
    done.close()
    page = webtest.TestApp(app).get(
        "/bits-status/", headers={"Accept": "application/json"}, extra_environ=LOOPBACK
    )
    (directory,) = page.json["directories"]
    (session,) = directory["in_progress"]
    assert session["destination"] == "dumps/a.dmp"
    assert (session["received"], session["total"], session["percent"]) == (250, 1000, 25.0)
    assert session["state"] == "receiving"
    assert [s["destination"] for s in directory["recent"]] == ["dumps/b.dmp"]
    assert directory["recent"][0]["state"] == "closed"
    assert directory["totals"] == {"": {"sessions": 1, "received": 250}}
    assert directory["health"]["backend"] == "ok" and directory["health"]["disk_free"] > 0
    html = webtest.TestApp(app).get("/bits-status/", extra_environ=LOOPBACK)
    assert html.content_type == "text/html"
    assert (
        'http-equiv="refresh"' in html.text and "25.0%" in html.text and "dumps/a.dmp" in html.text
    )


def test_failures_answered_are_listed_and_bounded(upload_dir: Path) -> None:
    app = make(upload_dir)
    for n in range(MAX_FAILURES + 5):
        BitsClient(app, path=f"/f{n}.bin").fragment(
            b"x", 0, 1, session_id="{11111111-2222-3333-4444-555555555555}"
        )
    failures = (
        webtest.TestApp(app)
        .get("/bits-status/", headers={"Accept": "application/json"}, extra_environ=LOOPBACK)
        .json["failures"]
    )
    assert len(failures) == MAX_FAILURES
    assert failures[0]["destination"] == f"f{MAX_FAILURES + 4}.bin"
    assert failures[0]["status"] == 500 and failures[0]["code"] == "0x8020001F"


def test_what_a_client_chose_is_text_on_the_page(upload_dir: Path) -> None:
    app = make(upload_dir)
    client = BitsClient(app, path="/a&b'c.bin", user="<img src=x onerror=alert(1)>")
    client.create()
    page = webtest.TestApp(app).get("/bits-status/", extra_environ=LOOPBACK).text
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "a&amp;b&#x27;c.bin" in page


def test_without_authentication_only_loopback_clients_read_it(upload_dir: Path) -> None:
    page = webtest.TestApp(make(upload_dir))
    assert page.get("/bits-status/", extra_environ={"REMOTE_ADDR": "::1"}).status_int == 200
    refused = page.get("/bits-status/", extra_environ={"REMOTE_ADDR": "10.0.0.7"}, status=403)
    assert "loopback" in refused.text
    public = webtest.TestApp(make(upload_dir, status_public=True))
    assert public.get("/bits-status/", extra_environ={"REMOTE_ADDR": "10.0.0.7"}).status_int == 200


def test_with_authentication_only_the_operators_read_it(upload_dir: Path) -> None:
    app = BasicAuth(make(upload_dir, status_users=["ops"]), {"ops": "pw", "host1": "pw"})
    page = webtest.TestApp(app)
    remote = {"REMOTE_ADDR": "10.0.0.7"}
    assert page.get("/bits-status/", extra_environ=remote, status=401).status_int == 401
    host = basic("host1", "pw")
    assert (
        page.get(
            "/bits-status/", headers={"Authorization": host}, extra_environ=LOOPBACK, status=403
        ).status_int
        == 403
    )  # even from loopback: a machine's credentials are not an operator's
    ops = basic("ops", "pw")
    assert (
        page.get("/bits-status/", headers={"Authorization": ops}, extra_environ=remote).status_int
        == 200
    )


def test_other_paths_and_methods_pass_through(upload_dir: Path) -> None:
    page = webtest.TestApp(make(upload_dir))
    assert page.get("/elsewhere", extra_environ=LOOPBACK).text.startswith("app GET")
    assert page.post("/bits-status/", extra_environ=LOOPBACK, status=405).status_int == 405


def test_a_farm_page_shows_every_hosts_sessions(tmp_path: Path, redis_url: str) -> None:
    """Two hosts sharing one Redis backend: a session created through one is on the other's
    page, with its bytes."""
    import uuid

    from bits_wsgi.backends.redis import RedisBackend

    prefix = f"t{uuid.uuid4().hex}"

    backends = [RedisBackend(tmp_path / "shared", url=redis_url, prefix=prefix) for _ in "ab"]
    first, second = (make(tmp_path / "uploads", backend=backend) for backend in backends)
    try:
        client = BitsClient(first, path="/dumps/farm.dmp", user="HOST42")
        client.create()
        client.fragment(b"x" * 300, 0, 600)
        page = webtest.TestApp(second).get(
            "/bits-status/", headers={"Accept": "application/json"}, extra_environ=LOOPBACK
        )
    finally:
        for host in (first, second):
            for server in host.servers:
                server.close()
        for backend in backends:
            backend.client.close()  # the hosts' connections to redis-server
    (session,) = page.json["directories"][0]["in_progress"]
    assert (session["identity"], session["destination"]) == ("HOST42", "dumps/farm.dmp")
    assert (session["received"], session["percent"]) == (300, 50.0)
