"""UploadServer: a packet, a body and an identity in; an Ack out. No WSGI here.

This is the glue of PROTOCOL.md §3–§6 and §10: Create, Fragment, Close and Cancel, each session
packet resolved under the session's lock, the offset algorithm (``session.plan_fragment``), byte
counting, fsync, the atomic commit and tombstones. Every failure leaves as a :class:`BITSError`
turned into an error Ack. Its helpers have a room each: upload-reply (``replies``), the upload's
sha256 (``digest``), and expiry, sweeps and caps (``upkeep``).

Longer than 350 lines because the four packets share one skeleton that is clearest read in
one place: resolution under the lock, the offset table, final processing and commit, and the
tombstone, each step a few lines; its helpers (replies, digest, upkeep) already have rooms.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from .. import paths
from ..backends.base import Backend, LocalFiles
from ..config import UploadDirectory
from ..errors import (
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
from ..escaping import client_text
from ..events import EventKind, Events, SessionEvent
from ..protocol import (
    PROTOCOL_GUID,
    Ack,
    CloseSession,
    CreateSession,
    Fragment,
    Packet,
    Ping,
    SessionId,
    SessionPacket,
)
from ..session import FragmentAction, SessionRecord, SessionState, Trigger, plan_fragment
from ..webhooks import Webhooks
from .completions import Completions
from .digest import UploadDigests
from .disk_floor import DiskFloor
from .quotas import Quotas
from .replies import Replies, ReplyUnavailable, RequestInfo
from .scan_gate import ScanGate
from .upkeep import SWEEP_INTERVAL, Upkeep

log = logging.getLogger("bits_wsgi")


class Body(Protocol):
    """A fragment's body as the server reads it: skip what is held, stream the rest, each a
    ``ShortBody`` if the client stops early (the WSGI layer's ``BodyReader``)."""

    def skip(self, count: int) -> None: ...

    def chunks(self, count: int) -> Iterator[bytes]: ...


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: A session id for asking a blob store where its data files live.
_ANY_SESSION = "00000000-0000-4000-8000-000000000000"


class UploadServer:
    def __init__(
        self,
        directory: UploadDirectory,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.time,
        sweep_interval: float | None = SWEEP_INTERVAL,
        events: Events | None = None,
        webhooks: Webhooks | None = None,
    ) -> None:
        """``backend`` is where the sessions live: the caller chooses it (the middleware's
        default is ``backends.default_backend``); the server does no file I/O of its own.
        With ``webhooks``, each completed upload's event goes to the backend's outbox."""
        self.directory = directory
        self.backend = backend
        self._files: LocalFiles | None = self.backend.files
        self.replies: Replies | None = None
        if directory.reply_mode:
            if self._files is None:
                raise ValueError("upload-reply mode needs a backend that keeps files on this host")
            self.replies = Replies(directory, self._files)
        self.events = events if events is not None else Events()
        self.completions: Completions | None = None
        if webhooks is not None:
            if backend.outbox is None:
                raise ValueError("webhooks need a backend that keeps an outbox")
            self.completions = Completions(backend.outbox, webhooks, directory, clock=clock)
        self.digests = UploadDigests(self._files)
        self.scan_gate: ScanGate | None = None
        if directory.scanner is not None:
            if self._files is None:
                raise ValueError("the scan gate needs a backend that keeps files on this host")
            self.scan_gate = ScanGate(directory, directory.scanner)
        self.quotas: Quotas | None = None
        if directory.quota_bytes_per_day is not None:
            if backend.usage is None:
                raise ValueError("quota_bytes_per_day needs a backend that counts usage")
            self.quotas = Quotas(directory.quota_bytes_per_day, backend.usage, clock=clock)
        data = [self._files.data_path(_ANY_SESSION).parent] if self._files is not None else []
        self.disk_floor = DiskFloor(directory.min_free_disk, [directory.upload_dir, *data])
        self._clock = clock
        self.upkeep = Upkeep(
            directory,
            self.backend,
            clock=clock,
            sweep_interval=sweep_interval,
            expired=self._expired,
        )

    # -- entry point ---------------------------------------------------------------------------

    def handle(self, packet: Packet, request: RequestInfo, body: Body) -> Ack:
        """Answer one packet. Never raises: every failure becomes an error Ack."""
        self.upkeep.ensure_running()
        if self.completions is not None:
            self.completions.ensure_running()
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
        if self.quotas is not None:
            self.quotas.check_room(request.identity)
        if self.disk_floor.reached():
            # Running sessions finish in the room that is left; a new one waits (§5.2: 503).
            raise ServiceUnavailable(f"less than {settings.min_free_disk} bytes of disk free")
        if self.upkeep.cap_reached():
            raise ServiceUnavailable(f"{settings.max_sessions} sessions open: the server is full")
        now = self._clock()
        record = SessionRecord(
            id=SessionId.new().key,
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
            session_id=SessionId(record.id).wire,
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
                    if record is None or self.upkeep.expire_if_stale(record):
                        continue
            except LockTimeout:
                pass  # busy means in use: it counts
            live += 1
        return live

    # -- Fragment, Close-Session, Cancel-Session (§3.3–§3.5, §6) -------------------------------

    def _with_session(self, packet: SessionPacket, request: RequestInfo, body: Body) -> Ack:
        if packet.session_id is None:
            raise SessionNotFound(f"malformed session id {packet.raw_session_id!r}")
        session_id = packet.session_id.key
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
        if self.upkeep.expire_if_stale(record):
            raise SessionNotFound(f"session {session_id} expired")
        if record.owner != request.identity:
            raise AccessDenied(f"session {session_id} belongs to another identity")
        return record

    def _expired(self, record: SessionRecord) -> None:
        self.digests.forget(record.id)
        self._emit("session_expired", record)

    def _fragment(
        self, record: SessionRecord, packet: Fragment, body: Body, request: RequestInfo
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

        quotas, identity = self.quotas, request.identity
        counted = quotas.take(identity, packet.range.total, plan.write) if quotas else 0
        try:
            body.skip(plan.skip)
            chunks = body.chunks(plan.write)
            stream: Iterable[bytes] = (
                self.digests.hashing(record, chunks) if self._wants_sha256 else chunks
            )
            written = self.backend.write(record.id, record.received, stream)
        except ShortBody as exc:
            self.digests.forget(record.id)
            if quotas is not None:
                quotas.give_back(identity, counted)
            raise InvalidRequest(f"fragment body incomplete: {exc}") from exc
        except OSError as exc:
            self.digests.forget(record.id)
            if quotas is not None:
                quotas.give_back(identity, counted)
            if exc.errno in _DISK_FULL_ERRNOS:
                raise DiskFull("no space left for the upload") from exc
            raise
        if written != plan.write:
            self.digests.forget(record.id)
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
        verdict = self._scanned(record) if self.scan_gate is not None else None
        record.advance(Trigger.ALL_BYTES)
        try:
            if self.replies is not None and not record.notified:
                self.replies.notify(record, request)
                self._saved(record, Ack(), durable=True)  # the NotifyCache
            if self._copy_due(record) and self.directory.commit_on == "final-fragment":
                self._commit(record)
        except BITSError:
            self._saved(record, Ack(), durable=True)
            raise
        record.advance(Trigger.FINISHED)
        log.info(
            "session %s: upload of %d bytes to %s complete%s",
            SessionId(record.id).wire,
            record.received,
            client_text(record.destination),
            ", committed" if record.committed else "",
        )
        sha256 = self.digests.sha256(record) if self._wants_sha256 else None
        if record.committed or not self._copy_due(record):
            self._completed(record, sha256, verdict=verdict)
        # A lost final record is recovered by the next final fragment: the commit is idempotent
        # and the NotifyCache was stored durably above, so no directory fsync is needed here.
        ack = self._saved(record, self._final_ack(record))
        if self.events.wants("upload_complete"):
            self._emit("upload_complete", record, sha256=sha256)
        return ack

    @property
    def _wants_sha256(self) -> bool:
        return self.completions is not None or self.events.wants("upload_complete")

    def _completed(
        self,
        record: SessionRecord,
        sha256: str | None,
        *,
        verdict: str | None = None,
        quarantine: Path | None = None,
    ) -> None:
        """Into the outbox, durably, before the Ack that tells the client (if webhooks are on)."""
        if self.completions is None:
            return
        path = None
        if record.committed:
            path = paths.resolve_destination(self.directory.upload_dir, record.destination)
        self.completions.record(
            record, sha256=sha256, path=path, verdict=verdict, quarantine=quarantine
        )

    def _scanned(self, record: SessionRecord) -> str:
        """The scan gate before anything is published: "clean", or the session ends refused
        (403, fatal for Windows) with its bytes in quarantine; a failed scan is a 503."""
        assert self.scan_gate is not None and self._files is not None
        if record.committed:
            return "clean"  # scanned before this commit, by an earlier final fragment
        data = self._files.data_path(record.id)
        verdict = self.scan_gate.inspect(record, data)
        if verdict.clean:
            return "clean"
        sha256 = self.digests.sha256(record)
        quarantined = self.scan_gate.quarantine(record, data, verdict, sha256)
        self._completed(record, sha256, verdict="refused", quarantine=quarantined)
        self._tombstone(record, Trigger.CANCEL, durable=True)
        raise AccessDenied(f"refused by the scan: {verdict.reason}")

    def _final_ack(self, record: SessionRecord) -> Ack:
        return Ack(received=record.received, reply_url=record.reply_url)

    def _copy_due(self, record: SessionRecord) -> bool:
        """Plain uploads are always copied; reply uploads only if the application asked."""
        if record.committed:
            return False
        return not self.directory.reply_mode or record.copy_to_destination

    # -- reply downloads (§7.5) ---------------------------------------------------------------

    def reply_file(self, raw_session_id: str, identity: str) -> Path:
        """The reply a GET may download (§7.5), after the owner check; refreshes activity."""
        parsed = SessionId.parse(raw_session_id)
        if parsed is None or self.replies is None:
            raise ReplyUnavailable(404, "no such reply")
        session_id = parsed.key
        try:
            with self.backend.lock(session_id, self.directory.lock_timeout):
                try:
                    record = self.backend.load(session_id)
                except CorruptRecord:
                    record = None
                if (
                    record is None
                    or record.state.is_tombstone
                    or self.upkeep.expire_if_stale(record)
                ):
                    raise ReplyUnavailable(404, "no such reply")
                path = self.replies.downloadable(record, identity)
                self._touched(record, Ack())
                return path
        except LockTimeout:
            raise ReplyUnavailable(503, "session busy") from None

    def _emit(self, kind: EventKind, record: SessionRecord, *, sha256: str | None = None) -> None:
        if not self.events.wants(kind):
            return
        committed = None
        if kind == "upload_complete" and record.committed:
            committed = paths.resolve_destination(self.directory.upload_dir, record.destination)
        self.events.emit(
            SessionEvent(
                kind=kind,
                session_id=SessionId(record.id).wire,
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
        committing = record.state is SessionState.WAIT_FOR_CLOSE and self._copy_due(record)
        if committing:
            # commit_on="close" (a 403 here keeps the session as it is)
            self._commit(record)
            sha256 = self.digests.sha256(record) if self.completions else None
            self._completed(record, sha256, verdict="clean" if self.scan_gate else None)
        return self._tombstone(record, Trigger.CLOSE, durable=committing)

    def _cancel(self, record: SessionRecord) -> Ack:
        return self._tombstone(record, Trigger.CANCEL, durable=False)

    def _tombstone(self, record: SessionRecord, trigger: Trigger, *, durable: bool) -> Ack:
        # The record is written first: a crash in between leaves a tombstone whose data a
        # sweep can remove, never a live session with its data gone. It is fsynced only when
        # this packet committed: that must be on record before the data goes (§10.2, exactly
        # once). Any other tombstone lost to a power cut (never to a crash: the save outlives
        # the process) brings back the session as it was, committed or abandoned by its client,
        # and a repeated Close or the sweep ends it again, so it needs no fsync of its own.
        tombstone = record.tombstone(trigger, self._clock())
        self.backend.save(tombstone, durable=durable or self.directory.fsync == "always")
        self.upkeep.ended(record)
        self.backend.discard_data(record.id)
        self.digests.forget(record.id)
        log.info("session %s: %s", SessionId(record.id).wire, tombstone.state.value)
        closed = trigger is Trigger.CLOSE
        self._emit("session_closed" if closed else "session_cancelled", record)
        return Ack()

    def _saved(self, record: SessionRecord, ack: Ack, *, durable: bool = False) -> Ack:
        """Refresh the activity time and persist the record, then answer (§6.1)."""
        record.last_activity = self._clock()
        self.backend.save(record, durable=durable or self.directory.fsync == "always")
        return ack

    def _touched(self, record: SessionRecord, ack: Ack) -> Ack:
        """Activity only (§6.1): the record is rewritten once per activity resolution."""
        if self._clock() - record.last_activity >= self.upkeep.activity_resolution:
            return self._saved(record, ack)
        return ack

    # -- upkeep (§6.4) --------------------------------------------------------------------------

    def sweep(self, older_than: float | None = None) -> int:
        """Delete expired sessions and old tombstones, keep the tombstone budget; how many went."""
        return self.upkeep.sweep(older_than)

    def close(self) -> None:
        """Stop the timed sweeps and deliveries (tests, and applications that rebuild their
        middleware)."""
        self.upkeep.close()
        if self.completions is not None:
            self.completions.close()
