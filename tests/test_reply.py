"""Upload-reply mode in-process: notifications, the NotifyCache, reply serving (PROTOCOL.md §7)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import webtest
from werkzeug.wrappers import Request, Response

from bits_wsgi import BITSMiddleware
from bits_wsgi.notify import Reply, Upload

from .conftest import BitsClient, error_of
from .support.sessions import edit_records


class App:
    """A server application reachable in-process; records every notification it gets."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.status = 200
        self.headers: dict[str, str] = {}
        self.delay = 0.0
        self.reply_by_reference = True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path != "/up/notify":
            return Response(b"page", status=200)(environ, start_response)
        body = request.stream.read()
        self.calls.append(
            {
                "headers": dict(request.headers),
                "query": request.query_string.decode(),
                "body": body,
                "marker": environ.get("bits_wsgi.notification"),
                "user": environ.get("REMOTE_USER"),
            }
        )
        time.sleep(self.delay)
        if self.status != 200:
            return Response(b"nope", status=self.status)(environ, start_response)
        response_file = request.headers.get("BITS-Response-DataFile-Name")
        if response_file and self.reply_by_reference:
            data = Path(request.headers["BITS-Request-DataFile-Name"]).read_bytes()
            Path(response_file).write_bytes(b"ref:" + hashlib.sha256(data).hexdigest().encode())
        reply = b"value:" + hashlib.sha256(body).hexdigest().encode()
        return Response(reply if not response_file else b"", headers=self.headers)(
            environ, start_response
        )


def make(root: Path, app: App, user: str | None = None, **options: Any) -> BitsClient:
    settings: dict[str, Any] = {
        "prefix": "/up/",
        "notification_type": "by-value",
        "notification_url": "notify",
    }
    settings.update(options)
    middleware = BITSMiddleware(app, root, **settings)
    return BitsClient(middleware, path="/up/f.bin", user=user)


def reply_of(client: BitsClient, url: str, **headers: str) -> webtest.TestResponse:
    path = url.split("://", 1)[1].split("/", 1)[1]
    environ = {"REMOTE_USER": client.user} if client.user else {}
    return client.test.get("/" + path, headers=headers, extra_environ=environ, expect_errors=True)


def upload(client: BitsClient, data: bytes, size: int = 1000) -> webtest.TestResponse:
    assert client.create().status_int == 200
    response = None
    for first in range(0, len(data), size):
        response = client.fragment(data[first : first + size], first, len(data))
        if first + size < len(data):
            assert response.status_int == 200
            assert "BITS-Reply-URL" not in response.headers  # only on the final Ack
    assert response is not None
    return response


DATA = bytes(range(256)) * 20


def test_by_value_in_process(tmp_path: Path) -> None:
    app = App()
    client = make(tmp_path, app, user="alice")
    final = upload(client, DATA)
    assert final.status_int == 200
    assert final.headers["BITS-Received-Content-Range"] == str(len(DATA))
    url = final.headers["BITS-Reply-URL"]
    session = (client.session_id or "").strip("{}")
    assert url == f"http://localhost/up/BITS-Sessions/Replies/%7B{session}%7D/responsefile.bin"
    (call,) = app.calls
    assert call["body"] == DATA
    assert call["marker"] is True and call["user"] == "alice"
    assert call["headers"]["Bits-Original-Request-Url"] == "http://localhost/up/f.bin"
    assert call["headers"]["Content-Type"] == "application/octet-stream"
    assert "Bits-Request-Datafile-Name" not in call["headers"]
    reply = reply_of(client, url)
    assert reply.status_int == 200
    assert reply.body == b"value:" + hashlib.sha256(DATA).hexdigest().encode()
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert not (tmp_path / "f.bin").exists()  # no copy unless the application asks


def test_by_reference_in_process(tmp_path: Path) -> None:
    app = App()
    client = make(tmp_path, app, notification_type="by-reference")
    final = upload(client, DATA)
    (call,) = app.calls
    assert call["body"] == b""
    data_file = Path(call["headers"]["Bits-Request-Datafile-Name"])
    reply_file = Path(call["headers"]["Bits-Response-Datafile-Name"])
    assert data_file.is_relative_to(tmp_path / "BITS-Sessions")
    assert reply_file.is_relative_to(tmp_path / "BITS-Sessions")
    reply = reply_of(client, final.headers["BITS-Reply-URL"])
    assert reply.body == b"ref:" + hashlib.sha256(DATA).hexdigest().encode()


def test_by_reference_without_a_reply_file_serves_an_empty_reply(tmp_path: Path) -> None:
    app = App()
    app.reply_by_reference = False
    client = make(tmp_path, app, notification_type="by-reference")
    final = upload(client, DATA)
    reply = reply_of(client, final.headers["BITS-Reply-URL"])
    assert reply.status_int == 200 and reply.body == b""


def test_query_string_goes_to_the_application(tmp_path: Path) -> None:
    app = App()
    client = make(tmp_path, app, notification_url="notify?source=bits")
    client.path = "/up/f.bin?ACCOUNT=7"
    upload(client, DATA)
    assert app.calls[0]["query"] == "source=bits&ACCOUNT=7"
    assert app.calls[0]["headers"]["Bits-Original-Request-Url"].endswith("/up/f.bin?ACCOUNT=7")


def test_copy_to_destination(tmp_path: Path) -> None:
    app = App()
    app.headers = {"BITS-Copy-File-To-Destination": "true"}
    client = make(tmp_path, app)
    upload(client, DATA)
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_static_response_url(tmp_path: Path) -> None:
    app = App()
    app.headers = {"BITS-Static-Response-URL": "https://cdn.example/replies/42"}
    client = make(tmp_path, app)
    final = upload(client, DATA)
    assert final.headers["BITS-Reply-URL"] == "https://cdn.example/replies/42"
    assert list((tmp_path / "BITS-Sessions" / "Replies").glob("*/*")) == []


@pytest.mark.parametrize("url", ["ftp://x/y", "/relative", "https://a b/c", "https://"])
def test_invalid_static_response_url_is_a_400_with_context_7(tmp_path: Path, url: str) -> None:
    app = App()
    app.headers = {"BITS-Static-Response-URL": url}
    final = upload(make(tmp_path, app), DATA)
    assert error_of(final) == (400, "0x80070057", "0x7")


@pytest.mark.parametrize(
    ("app_status", "ack_status", "code"),
    [
        (500, 500, "0x801901F4"),
        (403, 403, "0x80190193"),
        (404, 404, "0x80190194"),
        (503, 503, "0x801901F7"),
        (201, 500, "0x801900C9"),  # a 2xx other than 200 is a failure, relayed as 500
        (401, 500, "0x80190191"),  # statuses the client reads as protocol signals
        (413, 500, "0x8019019D"),
        (416, 500, "0x801901A0"),
    ],
)
def test_application_failure_is_relayed_and_retried(
    tmp_path: Path, app_status: int, ack_status: int, code: str
) -> None:
    app = App()
    app.status = app_status
    client = make(tmp_path, app)
    final = upload(client, DATA)
    assert error_of(final) == (ack_status, code, "0x7")
    assert final.headers["BITS-Received-Content-Range"] == str(len(DATA))
    assert "BITS-Reply-URL" not in final.headers
    # the session stays receivable; the retried final fragment notifies again
    app.status = 200
    again = client.fragment(DATA[-1000:], len(DATA) - 1000, len(DATA))
    assert again.status_int == 200 and "BITS-Reply-URL" in again.headers
    assert len(app.calls) == 2


def test_success_is_cached_and_never_notified_twice(tmp_path: Path) -> None:
    app = App()
    client = make(tmp_path, app)
    final = upload(client, DATA)
    for _ in range(3):
        again = client.fragment(DATA[-1000:], len(DATA) - 1000, len(DATA))
        assert again.status_int == 200
        assert again.headers["BITS-Reply-URL"] == final.headers["BITS-Reply-URL"]
    # and from another process on the same root (a restart)
    restarted = make(tmp_path, app)
    restarted.session_id = client.session_id
    again = restarted.fragment(DATA[-1000:], len(DATA) - 1000, len(DATA))
    assert again.headers["BITS-Reply-URL"] == final.headers["BITS-Reply-URL"]
    assert len(app.calls) == 1


def test_commit_refused_after_success_does_not_notify_again(tmp_path: Path) -> None:
    app = App()
    app.headers = {"BITS-Copy-File-To-Destination": "1"}
    client = make(tmp_path, app)
    assert client.create().status_int == 200
    (tmp_path / "f.bin").write_bytes(b"someone else")
    final = client.fragment(DATA, 0, len(DATA))
    assert error_of(final) == (403, "0x80070005", "0x5")
    (tmp_path / "f.bin").unlink()
    again = client.fragment(DATA, 0, len(DATA))
    assert again.status_int == 200 and "BITS-Reply-URL" in again.headers
    assert len(app.calls) == 1
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_slow_application_times_out_with_408(tmp_path: Path) -> None:
    app = App()
    app.delay = 1.5
    client = make(tmp_path, app, notification_timeout=0.2)
    final = upload(client, DATA)
    assert error_of(final) == (408, "0x80190198", "0x7")
    app.delay = 0
    for thread in threading.enumerate():  # the first call ends, and its late answer is discarded
        if thread.name == "bits-wsgi-notify":
            thread.join(10)
    again = client.fragment(DATA[-1000:], len(DATA) - 1000, len(DATA))
    assert again.status_int == 200
    reply = reply_of(client, again.headers["BITS-Reply-URL"])
    assert reply.body == b"value:" + hashlib.sha256(DATA).hexdigest().encode()


def test_ranged_downloads_of_the_reply(tmp_path: Path) -> None:
    app = App()
    client = make(tmp_path, app)
    url = upload(client, DATA).headers["BITS-Reply-URL"]
    whole = reply_of(client, url).body
    first = reply_of(client, url, Range="bytes=0-9")
    assert first.status_int == 206
    assert first.headers["Content-Range"] == f"bytes 0-9/{len(whole)}"
    second = reply_of(client, url, Range="bytes=10-")
    assert first.body + second.body == whole
    tail = reply_of(client, url, Range="bytes=-5")
    assert tail.body == whole[-5:]
    beyond = reply_of(client, url, Range=f"bytes={len(whole) + 10}-")
    assert beyond.status_int == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(whole)}"
    several = reply_of(client, url, Range="bytes=0-1,5-6")
    assert several.status_int == 200 and several.body == whole
    etag = first.headers["ETag"]
    assert not etag.startswith("W/")
    assert reply_of(client, url).headers["ETag"] == etag
    assert reply_of(client, url).headers["Last-Modified"] == first.headers["Last-Modified"]
    stale = reply_of(client, url, Range="bytes=0-1", **{"If-Range": '"other"'})
    assert stale.status_int == 200 and stale.body == whole


def test_head_of_the_reply(tmp_path: Path) -> None:
    app = App()
    client = make(tmp_path, app)
    url = upload(client, DATA).headers["BITS-Reply-URL"]
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    head = client.test.head(path)
    assert head.status_int == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(reply_of(client, url).body))


def test_reply_is_gone_after_close_and_after_cancel(tmp_path: Path) -> None:
    app = App()
    for packet in ("close", "cancel"):
        client = make(tmp_path / packet, app)
        url = upload(client, DATA).headers["BITS-Reply-URL"]
        assert getattr(client, packet)().status_int == 200
        assert reply_of(client, url).status_int == 404
        assert list((tmp_path / packet / "BITS-Sessions" / "Replies").iterdir()) == []


def test_only_the_owner_downloads_the_reply(tmp_path: Path) -> None:
    app = App()
    alice = make(tmp_path, app, user="alice")
    url = upload(alice, DATA).headers["BITS-Reply-URL"]
    mallory = BitsClient(alice.test.app, user="mallory")
    assert reply_of(mallory, url).status_int == 403
    anonymous = BitsClient(alice.test.app)
    assert reply_of(anonymous, url).status_int == 401
    assert reply_of(alice, url).status_int == 200


def test_reply_paths_reject_other_methods_and_unknown_sessions(tmp_path: Path) -> None:
    app = App()
    client = make(tmp_path, app)
    url = upload(client, DATA).headers["BITS-Reply-URL"]
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    assert client.test.put(path, b"x", expect_errors=True).status_int == 405
    unknown = "/up/BITS-Sessions/Replies/%7B11111111-2222-3333-4444-555555555555%7D/"
    assert client.test.get(unknown + "responsefile.bin", expect_errors=True).status_int == 404
    assert client.test.get(unknown + "requestfile.bin", expect_errors=True).status_int == 404
    assert client.test.get("/up/BITS-Sessions/Replies/x", expect_errors=True).status_int == 404
    # braces decoded, and the id in any case
    assert client.test.get(path.replace("%7B", "{").replace("%7D", "}").lower()).status_int == 200
    # the rest of the site is the application's
    assert client.test.get("/elsewhere").body == b"page"


def test_callable_application(tmp_path: Path) -> None:
    seen: list[Upload] = []

    def application(upload: Upload) -> Reply:
        seen.append(upload)
        with upload.open() as data:
            digest = hashlib.sha256(data.read()).hexdigest()
        return Reply(body=[b"sha256=", digest.encode()], copy_to_destination=True)

    client = make(tmp_path, App(), notification_url=application)
    final = upload(client, DATA)
    (received,) = seen
    assert received.size == len(DATA) and received.session_id == client.session_id
    assert reply_of(client, final.headers["BITS-Reply-URL"]).body == (
        b"sha256=" + hashlib.sha256(DATA).hexdigest().encode()
    )
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_callable_that_raises_is_a_500_with_context_7(tmp_path: Path) -> None:
    def application(upload: Upload) -> Reply:
        raise RuntimeError("bug in the application")

    final = upload(make(tmp_path, App(), notification_url=application), DATA)
    assert error_of(final) == (500, "0x801901F4", "0x7")


def test_unreachable_http_application_is_502(tmp_path: Path) -> None:
    final = upload(make(tmp_path, App(), notification_url="http://127.0.0.1:9/n"), DATA)
    assert error_of(final) == (502, "0x801901F6", "0x7")


def test_configuration_of_reply_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="notification_url"):
        BITSMiddleware(App(), tmp_path, notification_type="by-value")
    with pytest.raises(ValueError, match="notification_url"):
        BITSMiddleware(App(), tmp_path, notification_type="by-value", notification_url="ftp://x")
    with pytest.raises(ValueError, match="notification_timeout"):
        BITSMiddleware(
            App(),
            tmp_path,
            notification_type="by-value",
            notification_url="n",
            notification_timeout=600,
        )
    from bits_wsgi.backends import MemoryBackend

    with pytest.raises(ValueError, match="files on this host"):
        BITSMiddleware(
            App(),
            tmp_path,
            notification_type="by-value",
            notification_url="n",
            backend=MemoryBackend(),
        )


# -- events ----------------------------------------------------------------------------------


def test_events_with_sha256(tmp_path: Path) -> None:
    middleware = BITSMiddleware(App(), tmp_path)
    seen: list[Any] = []
    for kind in ("session_created", "fragment", "upload_complete", "session_closed"):
        middleware.events.register(kind, seen.append)  # type: ignore[arg-type]
    client = BitsClient(middleware)
    client.upload(DATA, fragment_size=1000)
    client.close()
    kinds = [event.kind for event in seen]
    assert kinds[0] == "session_created" and kinds[-2:] == ["upload_complete", "session_closed"]
    assert kinds.count("fragment") == len(DATA) // 1000
    complete = seen[-2]
    assert complete.sha256 == hashlib.sha256(DATA).hexdigest()
    assert complete.path == (tmp_path / "f.bin").resolve()
    assert complete.received == complete.total == len(DATA)


def test_sha256_after_a_restart_mid_upload(tmp_path: Path) -> None:
    first = BitsClient(BITSMiddleware(App(), tmp_path))
    first.create()
    first.fragment(DATA[:2000], 0, len(DATA))
    middleware = BITSMiddleware(App(), tmp_path)
    digests: list[str | None] = []
    middleware.events.on_upload_complete(lambda event: digests.append(event.sha256))
    second = BitsClient(middleware)
    second.session_id = first.session_id
    assert second.fragment(DATA[2000:], 2000, len(DATA)).status_int == 200
    assert digests == [hashlib.sha256(DATA).hexdigest()]


def test_cancel_and_expiry_events(tmp_path: Path) -> None:
    middleware = BITSMiddleware(App(), tmp_path, session_timeout=60)
    kinds: list[str] = []
    middleware.events.on_session_cancelled(lambda event: kinds.append(event.kind))
    middleware.events.on_session_expired(lambda event: kinds.append(event.kind))
    cancelled = BitsClient(middleware)
    cancelled.create()
    cancelled.cancel()
    expiring = BitsClient(middleware, path="/g.bin")
    expiring.create()
    edit_records(
        tmp_path, lambda record: record.update(last_activity=record["last_activity"] - 3600)
    )
    assert expiring.fragment(b"x", 0, 1).status_int == 500
    assert kinds == ["session_cancelled", "session_expired"]


def test_a_failing_hook_changes_nothing(tmp_path: Path) -> None:
    middleware = BITSMiddleware(App(), tmp_path)

    @middleware.events.on_fragment
    def broken(event: Any) -> None:
        raise RuntimeError("hook bug")

    @middleware.events.on_upload_complete
    def also_broken(event: Any) -> None:
        raise RuntimeError("hook bug")

    client = BitsClient(middleware)
    client.upload(DATA, fragment_size=1000)
    assert (tmp_path / "f.bin").read_bytes() == DATA
    assert client.close().status_int == 200


def test_concurrent_final_fragments_notify_once(tmp_path: Path) -> None:
    app = App()
    app.delay = 0.3
    client = make(tmp_path, app)
    client.create()
    statuses: list[int] = []

    def send() -> None:
        worker = BitsClient(client.test.app, path="/up/f.bin")
        statuses.append(
            worker.fragment(DATA, 0, len(DATA), session_id=client.session_id).status_int
        )

    threads = [threading.Thread(target=send) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200, 200]
    assert len(app.calls) == 1


def test_reply_is_gone_after_expiry(tmp_path: Path) -> None:
    app = App()
    client = make(tmp_path, app, session_timeout=60)
    url = upload(client, DATA).headers["BITS-Reply-URL"]
    assert reply_of(client, url).status_int == 200
    edit_records(tmp_path, lambda record: record.update(last_activity=record["last_activity"] - 61))
    assert reply_of(client, url).status_int == 404
    assert list((tmp_path / "BITS-Sessions" / "Replies").iterdir()) == []
