"""The scan gate's options for ``serve``: a command or a YARA rule set (with ``--scan-timeout``
and ``--quarantine-dir``, which are upload directory fields)."""

from __future__ import annotations

import argparse
import dataclasses

from ..config import UploadDirectory
from ..scan import Scanner
from ..server.scanners import CommandScanner, YaraScanner


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scan-command",
        default=None,
        metavar="COMMAND",
        help="scan each complete upload before it is published with this command, the file's "
        "path in place of {} or after it (exit 0 clean, 1 refused: 'clamdscan --fdpass'; "
        "needs --quarantine-dir; default: no scan)",
    )
    parser.add_argument(
        "--scan-yara",
        default=None,
        metavar="RULES",
        help="scan each complete upload with this YARA rule file; a match is refused (needs "
        "bits-wsgi[scan] and --quarantine-dir; default: no scan)",
    )


def with_scanner(directory: UploadDirectory, args: argparse.Namespace) -> UploadDirectory:
    if args.scan_command and args.scan_yara:
        raise ValueError("--scan-command and --scan-yara: choose one")
    scanner: Scanner
    if args.scan_command:
        scanner = CommandScanner(args.scan_command, timeout=directory.scan_timeout)
    elif args.scan_yara:
        scanner = YaraScanner(args.scan_yara, timeout=directory.scan_timeout)
    else:
        return directory
    return dataclasses.replace(directory, scanner=scanner)
