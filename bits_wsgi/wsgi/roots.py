"""Upload directories whose roots nest: allowed only where their prefixes nest the same way."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .. import paths
from ..config import UploadDirectory


def check_roots(directories: Sequence[UploadDirectory]) -> None:
    """Roots may nest only as their prefixes do (IIS's nested virtual directories).

    Otherwise clients of the outer directory could write into the inner one's state area, or
    put a file where the inner one keeps it, and lock that directory out.
    """
    real = [(Path(os.path.realpath(d.upload_dir)), d) for d in directories]
    for outer_root, outer in real:
        for inner_root, inner in real:
            if inner is outer or not inner_root.is_relative_to(outer_root):
                continue
            below = inner_root.relative_to(outer_root).parts
            matching_prefix = f"{outer.prefix}{'/'.join(below)}/"
            if (
                below
                and below[0].casefold() != paths.STATE_DIR_NAME.casefold()
                and inner.prefix == matching_prefix
            ):
                continue  # /up/ -> R and /up/private/ -> R/private: every request routes right
            raise ValueError(
                f"upload directory {inner.upload_dir} (prefix {inner.prefix}) lies inside "
                f"{outer.upload_dir} (prefix {outer.prefix}) while its prefix is not "
                f"{matching_prefix}: clients of {outer.prefix} could write into its files and "
                "state; give each upload directory a root of its own"
            )


def check_quarantines(directories: Sequence[UploadDirectory]) -> None:
    """A quarantine lies outside every upload root: what it holds is never served or listed."""
    roots = [Path(os.path.realpath(d.upload_dir)) for d in directories]
    for directory in directories:
        if directory.quarantine_dir is None:
            continue
        quarantine = Path(os.path.realpath(directory.quarantine_dir))
        for root in roots:
            if quarantine.is_relative_to(root) or root.is_relative_to(quarantine):
                raise ValueError(
                    f"quarantine {directory.quarantine_dir} and upload root {root} overlap: a "
                    "quarantine must lie outside every upload root"
                )
