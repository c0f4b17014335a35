"""Reading, ageing and damaging the sessions a filesystem backend keeps under an upload
directory, as an operator (or a crash) would, straight in its files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bits_wsgi.backends import FilesystemBackend


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _database(upload_dir: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(
        sqlite3.connect(upload_dir / "BITS-Sessions" / "sessions.sqlite3")
    ) as db:
        yield db
        db.commit()


def stored(upload_dir: Path) -> dict[str, bytes]:
    """Every stored record as its bytes, by session key."""
    with _database(upload_dir) as db:
        return {key: bytes(raw) for key, raw in db.execute("SELECT id, record FROM sessions")}


def records(upload_dir: Path) -> list[dict[str, Any]]:
    """Every stored session record, as JSON."""
    return [json.loads(raw) for raw in stored(upload_dir).values()]


def store_raw(upload_dir: Path, key: str, raw: bytes) -> None:
    """Replace a session's stored record with ``raw`` (damage, or an operator's edit)."""
    with _database(upload_dir) as db:
        db.execute("UPDATE sessions SET record = ? WHERE id = ?", (raw, key))


def edit_records(upload_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to every stored record's JSON, behind the server's back."""
    for key, raw in stored(upload_dir).items():
        record = json.loads(raw)
        change(record)
        store_raw(upload_dir, key, json.dumps(record).encode())


def data_files(upload_dir: Path) -> list[Path]:
    """The data files of the sessions in progress."""
    return sorted((upload_dir / "BITS-Sessions" / "Requests").glob("*.bin"))


def data_file(upload_dir: Path, session_id: str) -> Path:
    """A session's data file, for its id with or without braces."""
    return upload_dir / "BITS-Sessions" / "Requests" / f"{{{session_id.strip('{}')}}}.bin"


def age_sessions(upload_dir: Path, seconds: float) -> None:
    """Move every session's last activity ``seconds`` into the past."""
    backend = FilesystemBackend(upload_dir)
    for session_id in backend.session_ids():
        record = backend.load(session_id)
        assert record is not None
        record.last_activity -= seconds
        backend.save(record)


#: What an upload directory's state holds whatever its sessions: the folders, the database, the
#: lock file.
_FIXED_STATE = {"Requests", "Replies", "sessions.lock"}


def per_session_files(upload_dir: Path) -> list[str]:
    """Everything under the state folder that belongs to some session (relative paths)."""
    state = upload_dir / "BITS-Sessions"
    return sorted(
        str(path.relative_to(state))
        for path in state.rglob("*")
        if str(path.relative_to(state)) not in _FIXED_STATE
        and not path.name.startswith("sessions.sqlite3")
    )
