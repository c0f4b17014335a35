"""`bits-wsgi serve`, whose worker SIGKILLs itself once at a chosen point.

    python -m tests.integration.crashing_serve POINT MARKER serve-args...

POINT: ``before-commit`` / ``after-commit`` (the filesystem backend's commit), or
``s3-after-part`` (an S3 part uploaded, the chunks it consumed not yet deleted). The first
worker to reach the point creates MARKER and dies at once, as a crash would (MARKER may be
shared by several servers: one crash in all); gunicorn starts a new worker, and later requests
run normally.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from bits_wsgi.backends.filesystem import FilesystemBackend
from bits_wsgi.cli import main


def crash_once(marker: Path) -> None:
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def patch(point: str, marker: Path) -> None:
    commit = FilesystemBackend.commit

    def crashing_commit(self: FilesystemBackend, *args: Any, **kwargs: Any) -> None:
        if point == "before-commit":
            crash_once(marker)
        commit(self, *args, **kwargs)
        if point == "after-commit":  # published, and the record not yet saved as committed
            crash_once(marker)

    FilesystemBackend.commit = crashing_commit  # type: ignore[method-assign]
    if point == "s3-after-part":
        from bits_wsgi.backends.s3 import S3Store

        upload_part = S3Store._upload_part

        def crashing_upload_part(self: S3Store, *args: Any) -> None:
            upload_part(self, *args)
            crash_once(marker)  # the part is in S3; the chunks it consumed are not deleted

        S3Store._upload_part = crashing_upload_part  # type: ignore[method-assign]


if __name__ == "__main__":
    patch(sys.argv[1], Path(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
