"""Per-directory settings (PROTOCOL.md §8), validated once at start-up.

An :class:`UploadDirectory` is what IIS calls a virtual directory with BITS uploads enabled: a URL
prefix mapped to a root on disk, with its own limits and policies.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .notify import NotificationType, Reply, Upload, validate_notification_url
from .protocol import DEFAULT_ERROR_HEADERS
from .scan import Scanner

#: 5 KB: Windows never shrinks a fragment below this after a 413 (MC-BUP §3.1.5.2.4).
MIN_FRAGMENT_SIZE = 5 * 1024
#: Windows BITS 2.5+ sends fragments of up to 13 MB (MC-BUP <10>); with margin.
WINDOWS_MAX_FRAGMENT = 16 * 1024 * 1024
#: The IIS 7 request limit, and so what Windows clients are used to.
DEFAULT_MAX_FRAGMENT_SIZE = 30_000_000
#: BITSSessionTimeout's IIS default: 14 days.
DEFAULT_SESSION_TIMEOUT = 1_209_600

CommitOn = Literal["final-fragment", "close"]
FsyncMode = Literal["final", "always"]
Identity = Callable[[Mapping[str, Any]], str | None]


def normalise_prefix(prefix: str) -> str:
    """``uploads`` / ``/uploads`` / ``/uploads/`` all become ``/uploads/``."""
    stripped = prefix.strip("/")
    return "/" if not stripped else f"/{stripped}/"


def _option(default: Any, help: str, *, metavar: str | None = None, **more: Any) -> Any:
    """A field with what ``bits-wsgi serve`` needs to show it as a flag (``cli/options.py``)."""
    return field(default=default, metadata={"help": help, "metavar": metavar, **more})


@dataclass(frozen=True, kw_only=True)
class UploadDirectory:
    """One upload directory. Every option is documented in docs/configuration.md, and each but
    ``identity`` (a callable) is a ``bits-wsgi serve`` flag derived from this field."""

    upload_dir: Path
    prefix: str = _option("/", "URL prefix of the upload directory", metavar="PATH")
    allow_overwrites: bool = _option(False, "let an upload replace an existing file")
    max_upload_size: int | None = _option(
        None, "largest upload", metavar="BYTES", none_shown="unlimited"
    )
    max_fragment_size: int = _option(
        DEFAULT_MAX_FRAGMENT_SIZE, "largest fragment body; above it 413", metavar="BYTES"
    )
    session_timeout: float = _option(
        DEFAULT_SESSION_TIMEOUT, "idle seconds before a session expires", metavar="SECONDS"
    )
    session_limit: int | None = _option(
        50, "sessions per authenticated identity; 0 disables", metavar="N", zero_is_none=True
    )
    max_sessions: int | None = _option(
        10_000,
        "sessions open at once across all identities, and the tombstone budget; 0 disables",
        metavar="N",
        zero_is_none=True,
    )
    min_free_disk: int | None = _option(
        None,
        "free bytes below which new sessions get 503 + Retry-After and running ones go on; "
        "0 disables",
        metavar="BYTES",
        zero_is_none=True,
        none_shown="no floor",
    )
    quota_bytes_per_day: int | None = _option(
        None,
        "bytes each authenticated identity may store per UTC day; past it 503 + Retry-After "
        "until the next day, and an upload larger than the quota 500 BG_E_TOO_LARGE; 0 disables",
        metavar="BYTES",
        zero_is_none=True,
        none_shown="no quota",
    )
    host_id: str | None = _option(
        None, "host name or address clients continue on (farms)", metavar="HOST"
    )
    host_id_fallback_timeout: int = _option(
        86_400, "seconds a client insists on --host-id", metavar="SECONDS"
    )
    commit_on: CommitOn = _option("final-fragment", "when the file appears")
    lock_timeout: float = _option(
        30.0, "seconds a packet waits for a busy session before 503", metavar="SECONDS"
    )
    fsync: FsyncMode = _option("final", "fsync before the final Ack, or before every Ack")
    allow_method_override: bool = _option(
        False, "accept POST with X-Http-Method-Override: BITS_POST"
    )
    error_headers: tuple[str, ...] = _option(
        DEFAULT_ERROR_HEADERS, "the error headers Acks carry", metavar="HEADER"
    )
    identity: Identity | None = field(default=None, compare=False, metadata={"flag": False})
    #: the scan gate (``serve --scan-command``/``--scan-yara`` build one): bits_wsgi.scan
    scanner: Scanner | None = field(default=None, compare=False, metadata={"flag": False})
    scan_timeout: float = _option(
        300.0,
        "seconds a scan may take; past it the upload is not published and the client retries",
        metavar="SECONDS",
    )
    quarantine_dir: Path | None = _option(
        None,
        "where uploads the scan refuses go, outside every upload root (needed with a scan)",
        metavar="PATH",
    )
    notification_type: NotificationType = _option("none", "upload-reply notifications")
    notification_url: str | Callable[[Upload], Reply] | None = field(
        default=None,
        compare=False,
        metadata={
            "help": "absolute http(s) URL, or a URL relative to the upload, served by --app",
            "metavar": "URL",
        },
    )
    notification_timeout: float = _option(
        290.0, "seconds the application may take to answer", metavar="SECONDS"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "upload_dir", Path(os.path.abspath(self.upload_dir)))
        object.__setattr__(self, "prefix", normalise_prefix(self.prefix))
        object.__setattr__(self, "error_headers", tuple(self.error_headers))
        if self.quarantine_dir is not None:
            object.__setattr__(self, "quarantine_dir", Path(os.path.abspath(self.quarantine_dir)))
        self._validate()

    def _validate(self) -> None:
        problems = []
        if self.upload_dir.exists() and not self.upload_dir.is_dir():
            problems.append(f"upload_dir {self.upload_dir} is not a directory")
        if self.max_fragment_size < MIN_FRAGMENT_SIZE:
            problems.append(f"max_fragment_size must be at least {MIN_FRAGMENT_SIZE}")
        if self.max_upload_size is not None and self.max_upload_size < 0:
            problems.append("max_upload_size must not be negative")
        if self.session_timeout <= 0:
            problems.append("session_timeout must be positive")
        if self.session_limit is not None and self.session_limit < 0:
            problems.append("session_limit must not be negative")
        if self.max_sessions is not None and self.max_sessions < 0:
            problems.append("max_sessions must not be negative")
        if self.min_free_disk is not None and self.min_free_disk < 0:
            problems.append("min_free_disk must not be negative")
        if self.quota_bytes_per_day is not None and self.quota_bytes_per_day < 0:
            problems.append("quota_bytes_per_day must not be negative")
        if self.scan_timeout <= 0:
            problems.append("scan_timeout must be positive")
        if self.scanner is not None and self.quarantine_dir is None:
            problems.append("a scanner needs quarantine_dir, outside the upload root")
        if self.quarantine_dir is not None:
            root = Path(os.path.realpath(self.upload_dir))
            quarantine = Path(os.path.realpath(self.quarantine_dir))
            if quarantine.is_relative_to(root) or root.is_relative_to(quarantine):
                problems.append("quarantine_dir must lie outside the upload root, and not hold it")
        if self.host_id is not None and not 0 < len(self.host_id) <= 300:
            problems.append("host_id must be 1 to 300 characters")
        if self.host_id is not None and any(c.isspace() for c in self.host_id):
            problems.append("host_id must not contain whitespace")
        if self.host_id_fallback_timeout < 0:
            problems.append("host_id_fallback_timeout must not be negative")
        if self.commit_on not in ("final-fragment", "close"):
            problems.append("commit_on must be 'final-fragment' or 'close'")
        if self.fsync not in ("final", "always"):
            problems.append("fsync must be 'final' or 'always'")
        if self.lock_timeout < 0:
            problems.append("lock_timeout must not be negative")
        allowed_error_headers = set(DEFAULT_ERROR_HEADERS)
        if not self.error_headers or not set(self.error_headers) <= allowed_error_headers:
            problems.append(f"error_headers must be a non-empty subset of {DEFAULT_ERROR_HEADERS}")
        if self.notification_type not in ("none", "by-reference", "by-value"):
            problems.append("notification_type must be 'none', 'by-reference' or 'by-value'")
        elif self.reply_mode:
            problem = validate_notification_url(self.notification_url)
            if problem:
                problems.append(problem)
        if not 0 < self.notification_timeout <= 290:
            problems.append("notification_timeout must be above 0 and at most 290 seconds")
        if problems:
            raise ValueError("invalid upload directory configuration: " + "; ".join(problems))

    @property
    def reply_mode(self) -> bool:
        """Every upload to a notifying directory is an upload-reply job (D22)."""
        return self.notification_type != "none"

    @property
    def discard_limit(self) -> int:
        """How much of a body the server reads and throws away to deliver its Ack.

        A WSGI server that closes a connection with request bytes still unread makes the kernel
        reset it, and the client loses the Ack it was about to read: a 416 that should resync
        the upload, or a 413 that should shrink its fragments, becomes a network error that is
        retried with the same fragment, forever. So unused bodies are drained, bounded by the
        larger of ``max_fragment_size`` and the largest fragment Windows sends (docs/protocol.md).
        """
        return max(self.max_fragment_size, WINDOWS_MAX_FRAGMENT)

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> UploadDirectory:
        """Build from a settings dict (Flask or Django config); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(settings) - known
        if unknown:
            raise ValueError(f"unknown upload directory settings: {sorted(unknown)}")
        values = dict(settings)
        if "upload_dir" in values:
            values["upload_dir"] = Path(values["upload_dir"])
        if "error_headers" in values:
            values["error_headers"] = tuple(values["error_headers"])
        return cls(**values)


def directories_from_settings(settings: Mapping[str, Any]) -> list[UploadDirectory]:
    """Framework settings: one directory's options, or ``{"directories": [options, ...]}``."""
    if "directories" in settings:
        extra = set(settings) - {"directories"}
        if extra:
            raise ValueError(f"with 'directories', no other settings: {sorted(extra)}")
        entries = settings["directories"]
        if not entries:
            raise ValueError("'directories' is empty")
        return [UploadDirectory.from_mapping(entry) for entry in entries]
    if "upload_dir" not in settings:
        raise ValueError("BITS settings need 'upload_dir' (or 'directories')")
    return [UploadDirectory.from_mapping(settings)]
