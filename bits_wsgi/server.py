"""UploadServer: a packet, a body and an identity in; an Ack out. No WSGI here.

This is the glue of PROTOCOL.md §3–§6 and §10: session resolution under the session's lock, the
offset algorithm (``session.plan_fragment``), byte counting, fsync, the atomic commit, tombstones
and expiry. Everything a backend stores passes through here, and every failure leaves as a
:class:`BITSError` turned into an error Ack.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import paths
from .backends.base import Backend, LocalFiles, local_files
from .backends.filesystem import FilesystemBackend
from .body import BodyReader
from .config import UploadDirectory
from .errors import (
    AccessDenied,
    BackendUnavailable,
    BITSError,
    CorruptRecord,
    DataMissing,
    DestinationExists,
    DiskFull,
    FragmentTooLarge,
    InternalError,
    InvalidRequest,
    LeaseLost,
    LockTimeout,
    ServiceUnavailable,
    SessionNotFound,
    ShortBody,
)
from .events import EventKind, Events, SessionEvent
from .notify import CallableTarget, HttpTarget, Target, Upload, deliver
from .observe import client_text
from .protocol import (
    PROTOCOL_GUID,
    Ack,
    CloseSession,
    CreateSession,
    Fragment,
    Packet,
    Ping,
    SessionPacket,
    format_session_id,
    normalise_session_id,
)
from .session import (
    MAX_ACTIVITY_RESOLUTION,
    FragmentAction,
    SessionRecord,
    SessionState,
    activity_resolution,
    is_expired,
    plan_fragment,
)
from .session_cap import SessionCap
from .sweeper import Sweeper
from .tombstone_budget import TombstoneBudget

log = logging.getLogger("bits_wsgi")

#: IIS sweeps expired sessions every 12 hours by default (BITSCleanupUseDefault).
SWEEP_INTERVAL = 12 * 3600.0
#: Per-process running sha256 of uploads in progress, for on_upload_complete (see _hash).
HASH_CACHE_SIZE = 256
#: The first sweep comes soon after start, for sessions that expired while the server was down.
FIRST_SWEEP_DELAY = 60.0
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInfo:
    """What the server needs of the HTTP request: who sent it, and for which destination.

    ``identity`` is ``""`` for anonymous clients, who all share one identity (D8).
    ``base_url`` (scheme, host and script root) is where reply URLs point; a relative
    notification URL is reached through ``notification_target``, which only WSGI can build.
    """

    identity: str
    destination: str
    url: str
    base_url: str = ""
    notification_target: Target | None = None


class ReplyUnavailable(Exception):
    """A reply download that cannot be served; ``status`` is the plain HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class UploadServer:
    def __init__(
        self,
        directory: UploadDirectory,
        backend: Backend | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval: float | None = SWEEP_INTERVAL,
        events: Events | None = None,
    ) -> None:
        self.directory = directory
        directory.upload_dir.mkdir(parents=True, exist_ok=True)
        self.backend: Backend = (
            backend if backend is not None else FilesystemBackend(directory.upload_dir)
        )
        self._files: LocalFiles | None = local_files(self.backend)
        if directory.reply_mode and self._files is None:
            raise ValueError("upload-reply mode needs a backend that keeps files on this host")
        self.events = events if events is not None else Events()
        # Activity is stored at this resolution, so that most fragments write no record at all
        # (the offset is the data's length).
        self._activity_resolution = activity_resolution(directory.session_timeout)
        self._hashes: OrderedDict[str, tuple[int, hashlib._Hash]] = OrderedDict()
        self._hashes_guard = threading.Lock()
        self._clock = clock
        self._sweep_guard = threading.Lock()
        self.session_cap: SessionCap | None = None
        if directory.max_sessions:
            self.session_cap = SessionCap(
                directory.max_sessions, self.backend.active_count, self._sweep_for_cap
            )
        self.tombstone_budget: TombstoneBudget | None = None
        if directory.max_sessions:
            self.tombstone_budget = TombstoneBudget(
                directory.max_sessions, self.backend.tombstone_count, self._remove_tombstones
            )
        self._sweeper: Sweeper | None = None
        if sweep_interval is not None:
            self._sweeper = Sweeper(
                self._timed_sweep,
                sweep_interval,
                min(FIRST_SWEEP_DELAY, sweep_interval),
                self._sweep_guard,
            )
            self._sweeper.ensure_running()

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, packet: Packet, request: RequestInfo, body: BodyReader) -> Ack:
        """Answer one packet. Never raises: every failure becomes an error Ack."""
        if self._sweeper is not None:
            self._sweeper.ensure_running()  # in a worker forked after start-up
        try:
            if isinstance(packet, Ping):
                return Ack()
            if isinstance(packet, CreateSession):
                return self._create(request)
            if isinstance(packet, Fragment) and packet.content_length > (
                self.directory.max_fragment_size
            ):  # §4.2 c, before the session and before reading a byte
                raise FragmentTooLarge(
                    f"fragment of {packet.content_length} bytes exceeds "
                    f"{self.directory.max_fragment_size}"
                )
            return self._with_session(packet, request, body)
        except BITSError as error:
            return Ack.from_error(error)
        except LeaseLost:
            # Another holder may own the session now: nothing more was changed, and the client
            # retries (503) wherever the session went on.
            log.warning("%s: the session's lock expired under this request", type(packet).__name__)
            return Ack.from_error(ServiceUnavailable("session lock lost"))
        except BackendUnavailable as exc:
            log.warning("backend unavailable: %s", client_text(str(exc)))
            return Ack.from_error(ServiceUnavailable("backend unavailable"))
        except OSError as exc:
            if exc.errno not in _DISK_FULL_ERRNOS:
                log.exception("internal error on %s", type(packet).__name__)
                return Ack.from_error(InternalError())
            # A record or a new session's folder that found the disk full: as for the bytes.
            log.error("disk full on %s: %s", type(packet).__name__, client_text(str(exc)))
            return Ack.from_error(DiskFull("no space left"))
        except Exception:
            log.exception("internal error on %s", type(packet).__name__)
            return Ack.from_error(InternalError())

    # -- Create-Session (§3.2) -----------------------------------------------------------------

    def _create(self, request: RequestInfo) -> Ack:
        settings = self.directory
        destination = paths.Destination(settings.upload_dir, request.destination)
        if self.backend.destination_exists(destination) and not settings.allow_overwrites:
            raise AccessDenied(f"destination {request.destination} exists")
        limit = settings.session_limit
        # Anonymous clients are a fleet of different machines, not one identity: max_sessions
        # bounds them (§9.1, D23), or the 51st machine of a fleet would wait for days.
        if limit and request.identity and self._count_live_sessions(request.identity) >= limit:
            raise ServiceUnavailable(f"session limit reached for {request.identity!r}")
        if self.session_cap is not None and self.session_cap.reached():
            raise ServiceUnavailable(f"{settings.max_sessions} sessions open: the server is full")
        now = self._clock()
        record = SessionRecord(
            id=str(uuid.uuid4()).upper(),
            owner=request.identity,
            destination=request.destination,
            url=request.url,
            state=SessionState.RECEIVING,
            created=now,
            last_activity=now,
        )
        self.backend.create(record)
        self._emit("session_created", record)
        return Ack(
            protocol=PROTOCOL_GUID,
            session_id=format_session_id(record.id),
            accept_encoding=True,
            host_id=settings.host_id,
            host_id_fallback_timeout=settings.host_id_fallback_timeout
            if settings.host_id
            else None,
        )

    def _count_live_sessions(self, owner: str) -> int:
        """Live sessions of ``owner``; near the limit, stale ones are expired on the way."""
        ids = self.backend.active_sessions(owner)
        limit = self.directory.session_limit or 0
        if len(ids) < limit:
            return len(ids)
        live = 0
        for session_id in ids:
            try:
                with self.backend.lock(session_id, self.directory.lock_timeout):
                    record = self._load(session_id)
                    if record is None or self._expire_if_stale(record):
                        continue
            except LockTimeout:
                pass  # busy means in use: it counts
            live += 1
        return live

    def _released(self) -> None:
        if self.session_cap is not None:
            self.session_cap.released()

    def _sweep_for_cap(self) -> None:
        """At the global cap, expired sessions make room first (one thread at a time)."""
        if self._sweep_guard.acquire(blocking=False):
            try:
                self.sweep()
            finally:
                self._sweep_guard.release()

    # -- Fragment, Close-Session, Cancel-Session (§3.3–§3.5, §6) -------------------------------

    def _with_session(self, packet: SessionPacket, request: RequestInfo, body: BodyReader) -> Ack:
        session_id = normalise_session_id(packet.session_id)
        if session_id is None:
            raise SessionNotFound(f"malformed session id {packet.session_id!r}")
        try:
            with self.backend.lock(session_id, self.directory.lock_timeout):
                record = self._resolve(session_id, request)
                try:
                    if record.state.is_tombstone:  # §6.1 step 6: D4
                        if isinstance(packet, Fragment):
                            raise SessionNotFound(f"session {session_id} is {record.state.value}")
                        return Ack()
                    if record.destination != request.destination:  # §6.1 step 7
                        raise InvalidRequest(
                            f"session {session_id} uploads to {record.destination!r}"
                        )
                    if isinstance(packet, Fragment):
                        return self._fragment(record, packet, body, request)
                    if isinstance(packet, CloseSession):
                        return self._close(record)
                    return self._cancel(record)
                except BITSError as error:
                    if isinstance(packet, Fragment) and error.received is None:
                        error.received = record.received
                    raise
        except LockTimeout:
            raise ServiceUnavailable(f"session {session_id} is busy") from None

    def _load(self, session_id: str) -> SessionRecord | None:
        try:
            return self.backend.load(session_id)
        except CorruptRecord:
            log.error(
                "session %s: unreadable record, treated as unknown", session_id, exc_info=True
            )
            raise SessionNotFound(f"session {session_id} is unreadable") from None
        except OSError as exc:
            raise ServiceUnavailable(f"backend unavailable: {exc}") from exc

    def _resolve(self, session_id: str, request: RequestInfo) -> SessionRecord:
        """§6.1 steps 3–5, under the lock."""
        record = self._load(session_id)
        if record is None:
            raise SessionNotFound(f"unknown session {session_id}")
        if self._expire_if_stale(record):
            raise SessionNotFound(f"session {session_id} expired")
        if record.owner != request.identity:
            raise AccessDenied(f"session {session_id} belongs to another identity")
        return record

    def _expire_if_stale(self, record: SessionRecord, timeout: float | None = None) -> bool:
        """D16: delete an idle session (no tombstone) or an old tombstone. Caller holds the lock."""
        # A sweep with its own threshold (cleanup --older-than) may run beside servers of any
        # configuration: it allows for the coarsest resolution any of them stores activity at.
        if timeout is None:
            limit, resolution = self.directory.session_timeout, self._activity_resolution
        else:
            limit, resolution = timeout, MAX_ACTIVITY_RESOLUTION
        if not is_expired(record, self._clock(), limit, resolution):
            return False
        self.backend.delete(record.id)
        self._forget_hash(record.id)
        log.info("session %s: expired (%s)", format_session_id(record.id), record.state.value)
        if not record.state.is_tombstone:
            self._released()
            self._emit("session_expired", record)
        return True

    def _fragment(
        self, record: SessionRecord, packet: Fragment, body: BodyReader, request: RequestInfo
    ) -> Ack:
        plan = plan_fragment(
            record.received, record.total, packet.range, self.directory.max_upload_size
        )
        if plan.action is FragmentAction.FINAL_REPEAT:
            record.total = packet.range.total
            if record.state is SessionState.WAIT_FOR_CLOSE:
                return self._touched(record, self._final_ack(record))
            return self._finish(record, request)
        if plan.action is FragmentAction.DUPLICATE:
            return self._touched(record, Ack(received=record.received))

        try:
            body.skip(plan.skip)
            chunks = self._hashing(record, body.chunks(plan.write))
            written = self.backend.write(record.id, record.received, chunks)
        except ShortBody as exc:
            self._forget_hash(record.id)
            raise InvalidRequest(f"fragment body incomplete: {exc}") from exc
        except OSError as exc:
            self._forget_hash(record.id)
            if exc.errno in _DISK_FULL_ERRNOS:
                raise DiskFull("no space left for the upload") from exc
            raise
        if written != plan.write:
            self._forget_hash(record.id)
            self.backend.write(record.id, record.received, ())  # cut back what it did store
            raise InternalError(f"backend wrote {written} of {plan.write} bytes")
        if self.directory.fsync == "always":
            self.backend.sync(record.id)
        # §10.2: the offset is the data's length, so it moved with the bytes, never before them.
        record.received = plan.received
        first_bytes = record.total is None
        record.total = packet.range.total
        if record.is_complete:
            return self._finish(record, request)
        ack = Ack(received=record.received)
        ack = self._saved(record, ack) if first_bytes else self._touched(record, ack)
        self._emit("fragment", record)
        return ack

    def _finish(self, record: SessionRecord, request: RequestInfo) -> Ack:
        """Final processing (§4.5): fsync, notify, commit if due, store the final Ack.

        Each step that succeeded is recorded, so a repeated final fragment resumes at the first
        step that did not: a cached notification is never sent again.
        """
        self.backend.sync(record.id)
        record.state = SessionState.COMPLETE
        try:
            if self.directory.reply_mode and not record.notified:
                self._notify(record, request)
                self._saved(record, Ack(), durable=True)  # the NotifyCache
            if self._copy_due(record) and self.directory.commit_on == "final-fragment":
                self._commit(record)
        except BITSError:
            self._saved(record, Ack(), durable=True)
            raise
        record.state = SessionState.WAIT_FOR_CLOSE
        log.info(
            "session %s: upload of %d bytes to %s complete%s",
            format_session_id(record.id),
            record.received,
            client_text(record.destination),
            ", committed" if record.committed else "",
        )
        # A lost final record is recovered by the next final fragment: the commit is idempotent
        # and the NotifyCache was stored durably above, so no directory fsync is needed here.
        ack = self._saved(record, self._final_ack(record))
        if self.events.wants("upload_complete"):
            self._emit("upload_complete", record, sha256=self._upload_sha256(record))
        return ack

    def _final_ack(self, record: SessionRecord) -> Ack:
        return Ack(received=record.received, reply_url=record.reply_url)

    def _copy_due(self, record: SessionRecord) -> bool:
        """Plain uploads are always copied; reply uploads only if the application asked."""
        if record.committed:
            return False
        return not self.directory.reply_mode or record.copy_to_destination

    # -- notification (§7) ---------------------------------------------------------------------

    def _notify(self, record: SessionRecord, request: RequestInfo) -> None:
        settings = self.directory
        backend = self._files
        assert backend is not None  # checked in __init__
        reply_path = backend.reply_path(record.id)
        by_reference = settings.notification_type == "by-reference"
        upload = Upload(
            session_id=format_session_id(record.id),
            owner=record.owner,
            original_url=record.url,
            size=record.received,
            notification_type=settings.notification_type,
            data_path=backend.data_path(record.id),
            reply_path=reply_path if by_reference else None,
        )
        with contextlib.suppress(FileNotFoundError):
            reply_path.unlink()  # nothing of an earlier failed attempt is kept
        try:
            answer = deliver(
                self._target(request),
                upload,
                urlsplit(record.url).query,
                reply_path,
                settings.notification_timeout,
            )
        except BITSError as error:
            with contextlib.suppress(FileNotFoundError):
                reply_path.unlink()
            log.warning(
                "session %s: notification failed: %s", upload.session_id, client_text(str(error))
            )
            raise
        if answer.static_url is not None:
            with contextlib.suppress(FileNotFoundError):
                reply_path.unlink()  # a static reply is the application's, never stored here
            record.reply_url = answer.static_url
        else:
            if not reply_path.exists():
                reply_path.touch()  # D22: no reply is an empty reply
            record.reply_url = self._reply_url(request, record.id)
        record.notified = True
        record.copy_to_destination = answer.copy_to_destination

    def _target(self, request: RequestInfo) -> Target:
        url = self.directory.notification_url
        if callable(url):
            return CallableTarget(url)
        if url is not None and urlsplit(url).scheme:
            return HttpTarget(url, self.directory.notification_timeout)
        if request.notification_target is None:
            raise InternalError("a relative notification URL is reachable only through WSGI")
        return request.notification_target

    def _reply_url(self, request: RequestInfo, session_id: str) -> str:
        """Absolute, on the host of the completing request (D20)."""
        url = (
            f"{request.base_url.rstrip('/')}{self.directory.prefix}"
            f"{paths.STATE_DIR_NAME}/Replies/%7B{session_id}%7D/responsefile.bin"
        )
        if len(url) > paths.MAX_TARGET_LENGTH:
            raise InvalidRequest("reply URL longer than 2,200 characters")
        return url

    def reply_file(self, raw_session_id: str, identity: str) -> Path:
        """The reply a GET may download (§7.5), after the owner check; refreshes activity."""
        session_id = normalise_session_id(raw_session_id)
        if session_id is None or self._files is None:
            raise ReplyUnavailable(404, "no such reply")
        try:
            with self.backend.lock(session_id, self.directory.lock_timeout):
                try:
                    record = self.backend.load(session_id)
                except CorruptRecord:
                    record = None
                if record is None or record.state.is_tombstone or self._expire_if_stale(record):
                    raise ReplyUnavailable(404, "no such reply")
                if record.owner != identity:
                    status = 401 if not identity else 403
                    raise ReplyUnavailable(status, "the reply belongs to another identity")
                path = self._files.reply_path(session_id)
                if not record.notified or not path.is_file():
                    raise ReplyUnavailable(404, "no stored reply")
                self._touched(record, Ack())
                return path
        except LockTimeout:
            raise ReplyUnavailable(503, "session busy") from None

    # -- sha256 while the bytes stream in --------------------------------------------------------

    def _hashing(self, record: SessionRecord, chunks: Iterator[bytes]) -> Iterable[bytes]:
        """Hash the bytes as they are written, when a hook wants the upload's sha256.

        The running hash lives in this process only; when the next fragment lands in another
        worker (or after a restart), :meth:`_upload_sha256` reads the file once instead.
        """
        if not self.events.wants("upload_complete"):
            return chunks
        with self._hashes_guard:
            entry = self._hashes.pop(record.id, None)
        if entry is not None and entry[0] == record.received:
            hasher = entry[1]
        elif record.received == 0:
            hasher = hashlib.sha256()
        else:
            return chunks

        def hashed() -> Iterator[bytes]:
            count = record.received
            for chunk in chunks:
                hasher.update(chunk)
                count += len(chunk)
                yield chunk
            with self._hashes_guard:
                self._hashes[record.id] = (count, hasher)
                while len(self._hashes) > HASH_CACHE_SIZE:
                    self._hashes.popitem(last=False)

        return hashed()

    def _forget_hash(self, session_id: str) -> None:
        with self._hashes_guard:
            self._hashes.pop(session_id, None)

    def _upload_sha256(self, record: SessionRecord) -> str | None:
        with self._hashes_guard:
            entry = self._hashes.pop(record.id, None)
        if entry is not None and entry[0] == record.received:
            return entry[1].hexdigest()
        if record.received == 0:
            return hashlib.sha256().hexdigest()
        if self._files is None:
            return None
        try:
            with open(self._files.data_path(record.id), "rb") as data:
                return hashlib.file_digest(data, "sha256").hexdigest()
        except FileNotFoundError:
            return None

    def _emit(self, kind: EventKind, record: SessionRecord, *, sha256: str | None = None) -> None:
        if not self.events.wants(kind):
            return
        committed = None
        if kind == "upload_complete" and record.committed:
            committed = paths.resolve_destination(self.directory.upload_dir, record.destination)
        self.events.emit(
            SessionEvent(
                kind=kind,
                session_id=format_session_id(record.id),
                owner=record.owner,
                destination=record.destination,
                prefix=self.directory.prefix,
                received=record.received,
                total=record.total,
                path=committed,
                sha256=sha256,
            )
        )

    def _commit(self, record: SessionRecord) -> None:
        settings = self.directory
        destination = paths.Destination(settings.upload_dir, record.destination)
        try:
            self.backend.commit(record.id, destination, overwrite=settings.allow_overwrites)
        except DestinationExists:
            raise AccessDenied(f"destination {record.destination} appeared") from None
        except FileNotFoundError:
            raise DataMissing(f"data of session {record.id} is gone") from None
        except OSError as exc:
            if exc.errno in _DISK_FULL_ERRNOS:
                raise DiskFull("no space left to commit") from exc
            raise
        record.committed = True

    def _close(self, record: SessionRecord) -> Ack:
        if record.state is SessionState.WAIT_FOR_CLOSE and self._copy_due(record):
            # commit_on="close" (a 403 here keeps the session as it is)
            self._commit(record)
        return self._tombstone(record, SessionState.CLOSED)

    def _cancel(self, record: SessionRecord) -> Ack:
        return self._tombstone(record, SessionState.CANCELLED)

    def _tombstone(self, record: SessionRecord, state: SessionState) -> Ack:
        # The record is written first: a crash in between leaves a tombstone whose data a
        # sweep can remove, never a live session with its data gone.
        self.backend.save(record.tombstone(state, self._clock()), durable=True)
        if not record.state.is_tombstone:
            self._released()
            if self.tombstone_budget is not None:
                self.tombstone_budget.noted()
        self.backend.discard_data(record.id)
        self._forget_hash(record.id)
        log.info("session %s: %s", format_session_id(record.id), state.value)
        closed = state is SessionState.CLOSED
        self._emit("session_closed" if closed else "session_cancelled", record)
        return Ack()

    def _saved(self, record: SessionRecord, ack: Ack, *, durable: bool = False) -> Ack:
        """Refresh the activity time and persist the record, then answer (§6.1)."""
        record.last_activity = self._clock()
        self.backend.save(record, durable=durable or self.directory.fsync == "always")
        return ack

    def _touched(self, record: SessionRecord, ack: Ack) -> Ack:
        """Activity only (§6.1): the record is rewritten once per activity resolution."""
        if self._clock() - record.last_activity >= self._activity_resolution:
            return self._saved(record, ack)
        return ack

    # -- expiry sweeps (§6.4) ------------------------------------------------------------------

    def sweep(self, older_than: float | None = None) -> int:
        """Delete expired sessions and old tombstones; return how many went.

        Each session is taken under its lock without waiting: a busy session is in use, and so
        not expired, whatever its last recorded activity says.
        """
        removed = 0
        for session_id in list(self.backend.session_ids()):
            try:
                with self.backend.lock(session_id, 0):
                    try:
                        record = self.backend.load(session_id)
                    except CorruptRecord:
                        log.error("sweep: session %s has an unreadable record", session_id)
                        continue
                    if record is None:
                        continue
                    if self._expire_if_stale(record, older_than):
                        removed += 1
            except LockTimeout:
                continue
        if self.tombstone_budget is not None:
            removed += self.tombstone_budget.enforce()
        return removed

    def _remove_tombstones(self, excess: int) -> int:
        """The oldest ``excess`` tombstones go (the budget, §6.3); a busy one is skipped."""
        removed = 0
        for session_id in self.backend.oldest_tombstones(excess):
            try:
                with self.backend.lock(session_id, 0):
                    try:
                        record = self.backend.load(session_id)
                    except CorruptRecord:
                        continue  # kept for an operator, as sweeps do
                    if record is not None and record.state.is_tombstone:
                        self.backend.delete(session_id)
                        removed += 1
            except LockTimeout:
                continue
        if removed:
            log.info("tombstone budget: removed the %d oldest tombstones", removed)
        return removed

    def _timed_sweep(self) -> int:
        """The sweeper's sweep: skipped while another thread of this process sweeps."""
        if not self._sweep_guard.acquire(blocking=False):
            return 0
        try:
            return self.sweep()
        finally:
            self._sweep_guard.release()

    def close(self) -> None:
        """Stop the timed sweeps (tests, and applications that rebuild their middleware)."""
        if self._sweeper is not None:
            self._sweeper.stop()
