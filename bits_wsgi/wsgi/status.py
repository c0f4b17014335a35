"""The operator's live status page: ``BITSMiddleware(..., status_path="/bits-status/")`` or
``bits-wsgi serve --status-path /bits-status/``.

A server-rendered HTML page that refreshes itself (every 2 s), or the same data as JSON for a
request that accepts ``application/json`` better: the sessions in progress with identity,
destination, bytes and percent, rate, idle time and state; the sessions that ended last; totals
per identity; the recent failures this process answered; the disk's free space and whether the
backend answers (``bits_wsgi.server.status``). Sessions come from the backend, so a Redis farm's
page shows every host's; failures are this process's own.

Who may read it: on a server with authentication (``REMOTE_USER`` set), only the operators named
in ``users``; without, only loopback clients, unless ``public``. Everything a client chose
(destinations, identities) is escaped.
"""

from __future__ import annotations

import html
import ipaddress
import json
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from ..server import UploadServer
from ..server.status import SessionView, Snapshot, snapshot
from .observe import PacketRecord

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: Failures kept for the page, per process, most recent first.
MAX_FAILURES = 50
REFRESH_SECONDS = 2


class RecentFailures:
    def __init__(self, size: int = MAX_FAILURES) -> None:
        self._items: deque[dict[str, object]] = deque(maxlen=size)
        self._guard = threading.Lock()

    def note(self, record: PacketRecord) -> None:
        if record.status == 200:
            return
        item: dict[str, object] = {
            "time": time.time(),
            "remote": record.remote,
            "identity": record.identity,
            "packet": record.packet,
            "destination": record.destination,
            "status": record.status,
            "code": record.code,
        }
        with self._guard:
            self._items.appendleft(item)

    def items(self) -> list[dict[str, object]]:
        with self._guard:
            return list(self._items)


class StatusPage:
    def __init__(
        self,
        servers: Sequence[UploadServer],
        *,
        users: Collection[str] = (),
        public: bool = False,
    ) -> None:
        self.servers = servers
        self.users = frozenset(users)
        self.public = public
        self.failures = RecentFailures()

    def allowed(self, environ: WSGIEnvironment) -> bool:
        user = environ.get("REMOTE_USER")
        if user:
            return str(user) in self.users
        if self.public:
            return True
        try:
            return ipaddress.ip_address(str(environ.get("REMOTE_ADDR", ""))).is_loopback
        except ValueError:
            return False

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", "GET or HEAD only.\n")
        if not self.allowed(environ):
            reason = (
                "this user is not an operator of this server"
                if environ.get("REMOTE_USER")
                else "the status page answers loopback clients only"
            )
            return _plain(start_response, "403 Forbidden", f"Forbidden: {reason}.\n")
        snapshots = [snapshot(server.backend, server.directory) for server in self.servers]
        failures = self.failures.items()
        accept = parse_accept_header(environ.get("HTTP_ACCEPT"), MIMEAccept)
        if accept.best_match(["text/html", "application/json"]) == "application/json":
            body = json.dumps(
                {"directories": [s.as_json() for s in snapshots], "failures": failures}
            ).encode()
            kind = "application/json"
        else:
            body = render_html(snapshots, failures).encode("utf-8")
            kind = "text/html; charset=utf-8"
        start_response(
            "200 OK",
            [
                ("Content-Type", kind),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                ("Vary", "Accept"),
            ],
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]


def _plain(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(
        status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _size(count: int | None) -> str:
    if count is None:
        return "?"
    if count < 1024:
        return f"{count:,} B"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:,.1f} {unit}"
    return f"{size / 1024:,.1f} TiB"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _row(view: SessionView, now: float) -> str:
    e = html.escape
    percent = "?" if view.percent is None else f"{view.percent:.1f}%"
    width = 0 if view.percent is None else view.percent
    total = "?" if view.total is None else _size(view.total)
    return (
        f'<tr data-session="{e(view.session)}"><td>{e(view.identity) or "<i>anonymous</i>"}</td>'
        f"<td>{e(view.destination)}</td><td>{e(view.state)}</td>"
        f'<td class="num">{_size(view.received)} / {total}</td>'
        f'<td class="num percent"><span class="bar" style="width:{width:.0f}%"></span>'
        f'{percent}</td><td class="num">{_size(round(view.rate))}/s</td>'
        f'<td class="num">{_ago(now - view.last_activity)}</td></tr>'
    )


_STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em} h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%} th,td{padding:.3em .6em;border-bottom:1px solid #ddd;
text-align:left} td.num{text-align:right;white-space:nowrap} td.percent{position:relative}
span.bar{position:absolute;left:0;top:15%;height:70%;background:#cde4ff;z-index:-1}
.bad{color:#a00} .ok{color:#060} .muted{color:#777}
"""

_HEAD = (
    "<tr><th>identity</th><th>destination</th><th>state</th><th>bytes</th><th>done</th>"
    "<th>rate</th><th>idle</th></tr>"
)


def render_html(snapshots: Sequence[Snapshot], failures: Sequence[dict[str, object]]) -> str:
    e = html.escape
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>bits-wsgi status</title><style>{_STYLE}</style></head><body>",
        "<h1>bits-wsgi: BITS uploads</h1>",
    ]
    for shot in snapshots:
        now = shot.taken
        backend = (
            '<span class="ok">answers</span>'
            if shot.backend_error is None
            else f'<span class="bad">{e(shot.backend_error)}</span>'
        )
        floor = ""
        if shot.disk_floor is not None:
            below = ' class="bad"' if shot.below_floor else ""
            words = "new sessions wait" if shot.below_floor else "new sessions below it wait"
            floor = f" <span{below}>Floor {_size(shot.disk_floor)}: {words}.</span>"
        parts.append(
            f"<h2>{e(shot.prefix)}</h2><p>Disk: {_size(shot.disk_free)} free of "
            f"{_size(shot.disk_total)}.{floor} Backend: {backend}. "
            f'<span class="muted">{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))}'
            "</span></p>"
        )
        if shot.truncated:
            parts.append('<p class="bad">More sessions than this page reads: the first shown.</p>')
        parts.append(f"<h3>In progress ({len(shot.in_progress)})</h3><table>{_HEAD}")
        parts.extend(_row(view, now) for view in shot.in_progress)
        parts.append("</table><h3>Per identity</h3><table>")
        parts.append("<tr><th>identity</th><th>sessions</th><th>bytes received</th></tr>")
        for identity, totals in sorted(shot.totals.items()):
            name = e(identity) or "<i>anonymous</i>"
            parts.append(
                f'<tr><td>{name}</td><td class="num">{totals.sessions}</td>'
                f'<td class="num">{_size(totals.received)}</td></tr>'
            )
        if shot.quota is not None:
            parts.append(f"</table><h3>Stored today (quota {_size(shot.quota)} a day)</h3>")
            parts.append("<table><tr><th>identity</th><th>bytes today</th><th></th></tr>")
            for identity, stored in shot.stored_today.items():
                reached = '<span class="bad">quota reached: waits for tomorrow</span>'
                parts.append(
                    f'<tr><td>{e(identity)}</td><td class="num">{_size(stored)}</td>'
                    f"<td>{reached if stored >= shot.quota else ''}</td></tr>"
                )
        parts.append(f"</table><h3>Ended lately</h3><table>{_HEAD}")
        parts.extend(_row(view, now) for view in shot.recent)
        parts.append("</table>")
    parts.append("<h2>Failures answered by this process</h2><table>")
    parts.append(
        "<tr><th>when</th><th>remote</th><th>identity</th><th>packet</th><th>destination</th>"
        "<th>status</th></tr>"
    )
    for failure in failures:
        when = time.strftime("%H:%M:%S", time.localtime(float(str(failure["time"]))))
        parts.append(
            f"<tr><td>{when}</td><td>{e(str(failure['remote']))}</td>"
            f"<td>{e(str(failure['identity']))}</td><td>{e(str(failure['packet']))}</td>"
            f"<td>{e(str(failure['destination']))}</td>"
            f"<td>{failure['status']} {e(str(failure['code']))}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "".join(parts)
