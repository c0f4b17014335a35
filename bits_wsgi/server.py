"""UploadServer: a packet, a body and an identity in; an Ack out. No WSGI here.

This is the glue of PROTOCOL.md §3–§6 and §10: session resolution under the session's lock, the
offset algorithm (``session.plan_fragment``), byte counting, fsync, the atomic commit, tombstones
and expiry. Everything a backend stores passes through here, and every failure leaves as a
:class:`BITSError` turned into an error Ack.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from . import paths
from .backends.base import Backend
from .backends.filesystem import FilesystemBackend
from .body import BodyReader
from .config import UploadDirectory
from .errors import (
    AccessDenied,
    BITSError,
    CorruptRecord,
    DataMissing,
    DestinationExists,
    DiskFull,
    FragmentTooLarge,
    InternalError,
    InvalidRequest,
    LockTimeout,
    ServiceUnavailable,
    SessionNotFound,
    ShortBody,
)
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
from .session import FragmentAction, SessionRecord, SessionState, is_expired, plan_fragment

log = logging.getLogger("bits_wsgi")

#: IIS sweeps expired sessions every 12 hours by default (BITSCleanupUseDefault).
SWEEP_INTERVAL = 12 * 3600.0
#: The first sweep comes soon after start, for sessions that expired while the server was down.
FIRST_SWEEP_DELAY = 60.0
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInfo:
    """What the server needs of the HTTP request: who sent it, and for which destination.

    ``identity`` is ``""`` for anonymous clients, who all share one identity (D8).
    """

    identity: str
    destination: str
    url: str


class UploadServer:
    def __init__(
        self,
        directory: UploadDirectory,
        backend: Backend | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval: float | None = SWEEP_INTERVAL,
    ) -> None:
        self.directory = directory
        directory.upload_dir.mkdir(parents=True, exist_ok=True)
        self.backend: Backend = (
            backend if backend is not None else FilesystemBackend(directory.upload_dir)
        )
        self._clock = clock
        self._sweep_interval = sweep_interval
        self._next_sweep = time.monotonic() + min(FIRST_SWEEP_DELAY, sweep_interval or 0.0)
        self._sweep_guard = threading.Lock()

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, packet: Packet, request: RequestInfo, body: BodyReader) -> Ack:
        """Answer one packet. Never raises: every failure becomes an error Ack."""
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
        except Exception:
            log.exception("internal error on %s", type(packet).__name__)
            return Ack.from_error(InternalError())

    # -- Create-Session (§3.2) -----------------------------------------------------------------

    def _create(self, request: RequestInfo) -> Ack:
        settings = self.directory
        destination = paths.resolve_destination(settings.upload_dir, request.destination)
        if destination.exists() and not settings.allow_overwrites:
            raise AccessDenied(f"destination {request.destination} exists")
        limit = settings.session_limit
        if limit and self._count_live_sessions(request.identity) >= limit:
            raise ServiceUnavailable(f"session limit reached for {request.identity!r}")
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
        self._maybe_sweep()
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
                        return self._fragment(record, packet, body)
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
            self.backend.delete(session_id)  # drops the lock file an unknown id just created
            raise SessionNotFound(f"unknown session {session_id}")
        if self._expire_if_stale(record):
            raise SessionNotFound(f"session {session_id} expired")
        if record.owner != request.identity:
            raise AccessDenied(f"session {session_id} belongs to another identity")
        return record

    def _expire_if_stale(self, record: SessionRecord, timeout: float | None = None) -> bool:
        """D16: delete an idle session (no tombstone) or an old tombstone. Caller holds the lock."""
        limit = self.directory.session_timeout if timeout is None else timeout
        if not is_expired(record, self._clock(), limit):
            return False
        self.backend.delete(record.id)
        log.info("session %s: expired (%s)", format_session_id(record.id), record.state.value)
        return True

    def _fragment(self, record: SessionRecord, packet: Fragment, body: BodyReader) -> Ack:
        plan = plan_fragment(
            record.received, record.total, packet.range, self.directory.max_upload_size
        )
        if plan.action is FragmentAction.FINAL_REPEAT:
            if record.state is SessionState.WAIT_FOR_CLOSE:
                return self._saved(record, Ack(received=record.received))
            return self._finish(record)
        if plan.action is FragmentAction.DUPLICATE:
            return self._saved(record, Ack(received=record.received))

        try:
            body.skip(plan.skip)
            written = self.backend.write(record.id, record.received, body.chunks(plan.write))
        except ShortBody as exc:
            raise InvalidRequest(f"fragment body incomplete: {exc}") from exc
        except OSError as exc:
            if exc.errno in _DISK_FULL_ERRNOS:
                raise DiskFull("no space left for the upload") from exc
            raise
        if written != plan.write:
            raise InternalError(f"backend wrote {written} of {plan.write} bytes")
        if self.directory.fsync == "always":
            self.backend.sync(record.id)
        # §10.2: the data is written before the offset moves.
        record.received = plan.received
        record.total = packet.range.total
        if record.is_complete:
            return self._finish(record)
        return self._saved(record, Ack(received=record.received), durable=False)

    def _finish(self, record: SessionRecord) -> Ack:
        """Final processing (§4.5): fsync, commit if due, store the final Ack."""
        self.backend.sync(record.id)
        record.state = SessionState.COMPLETE
        if self.directory.commit_on == "final-fragment" and not record.committed:
            try:
                self._commit(record)
            except BITSError:
                self._saved(record, Ack(), durable=True)
                raise
        record.state = SessionState.WAIT_FOR_CLOSE
        log.info(
            "session %s: upload of %d bytes to %s complete%s",
            format_session_id(record.id),
            record.received,
            record.destination,
            ", committed" if record.committed else "",
        )
        return self._saved(record, Ack(received=record.received), durable=True)

    def _commit(self, record: SessionRecord) -> None:
        settings = self.directory
        destination = paths.prepare_destination(settings.upload_dir, record.destination)
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
        commit_due = (
            record.state is SessionState.WAIT_FOR_CLOSE
            and self.directory.commit_on == "close"
            and not record.committed
        )
        if commit_due:
            self._commit(record)  # a 403 here keeps the session as it is
        return self._tombstone(record, SessionState.CLOSED)

    def _cancel(self, record: SessionRecord) -> Ack:
        return self._tombstone(record, SessionState.CANCELLED)

    def _tombstone(self, record: SessionRecord, state: SessionState) -> Ack:
        # The record is written first: a crash in between leaves a tombstone whose data a
        # sweep can remove, never a live session with its data gone.
        self.backend.save(record.tombstone(state, self._clock()), durable=True)
        self.backend.discard_data(record.id)
        log.info("session %s: %s", format_session_id(record.id), state.value)
        return Ack()

    def _saved(self, record: SessionRecord, ack: Ack, *, durable: bool = False) -> Ack:
        """Refresh the activity time and persist the record, then answer (§6.1)."""
        record.last_activity = self._clock()
        self.backend.save(record, durable=durable or self.directory.fsync == "always")
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
        return removed

    def _maybe_sweep(self) -> None:
        if self._sweep_interval is None or time.monotonic() < self._next_sweep:
            return
        if not self._sweep_guard.acquire(blocking=False):
            return
        self._next_sweep = time.monotonic() + self._sweep_interval

        def run() -> None:
            try:
                count = self.sweep()
                log.info("sweep removed %d expired sessions", count)
            except Exception:
                log.exception("sweep failed")
            finally:
                self._sweep_guard.release()

        threading.Thread(target=run, name="bits-wsgi-sweep", daemon=True).start()
