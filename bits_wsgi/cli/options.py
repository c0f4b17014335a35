"""Flags derived from :class:`~bits_wsgi.config.UploadDirectory`'s fields, never copied by hand.

Each field becomes ``--field-name``: its type gives the flag's type (a ``Literal`` its choices,
a ``bool`` a switch, a tuple several values), its default is the field's default, and its help
comes from the field's metadata. A field with ``zero_is_none`` takes ``0`` for "disabled". A field
marked ``flag: False`` (``identity``, a callable) is library-only.
"""

from __future__ import annotations

import argparse
import os
import typing
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from ..backends import Backend
from ..config import UploadDirectory


def directory_fields() -> list[Field[Any]]:
    """The fields that are flags, in their order."""
    return [
        item
        for item in fields(UploadDirectory)
        if item.default is not MISSING and item.metadata.get("flag", True)
    ]


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_directory_options(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(UploadDirectory)
    for item in directory_fields():
        kind = hints[item.name]
        options: dict[str, Any] = {"dest": item.name, "default": item.default}
        help_text = str(item.metadata.get("help", ""))
        if item.metadata.get("metavar"):
            options["metavar"] = item.metadata["metavar"]
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
            options.pop("metavar", None)
        elif typing.get_origin(kind) is typing.Literal:
            options["choices"] = list(typing.get_args(kind))
        elif typing.get_origin(kind) is tuple:
            options["nargs"] = "+"
            options["type"] = str
        else:
            options["type"] = _scalar(kind)
        shown = item.metadata.get("none_shown", "none") if item.default is None else None
        shown = shown or _shown(item.default)
        options["help"] = f"{help_text} (default: {shown})"
        parser.add_argument(flag_of(item.name), **options)


def directory_from(args: argparse.Namespace, root: str | os.PathLike[str]) -> UploadDirectory:
    """The upload directory the flags describe (``UploadDirectory`` validates it)."""
    values: dict[str, Any] = {}
    for item in directory_fields():
        value = getattr(args, item.name)
        if item.metadata.get("zero_is_none") and value == 0:
            value = None
        if isinstance(value, list):
            value = tuple(value)
        values[item.name] = value
    return UploadDirectory(upload_dir=Path(root), **values)


def _scalar(kind: Any) -> type:
    """``int | None`` -> int, ``str | Callable | None`` -> str, ``Path | None`` -> Path: the type
    a flag's text becomes."""
    candidates = typing.get_args(kind) or (kind,)
    for candidate in (int, float, Path, str):
        if candidate in candidates:
            return candidate
    raise TypeError(f"no flag type for {kind!r}")


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(part) for part in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# -- where sessions live: serve, sessions and cleanup ----------------------------------------------


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        default=None,
        metavar="redis://HOST:PORT/DB",
        help="keep sessions in Redis, shared by several hosts (default: files under ROOT)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        metavar="PATH|s3://BUCKET/PREFIX",
        help="with --backend: where upload bytes live, a directory every host mounts or an S3 "
        "bucket (committed uploads then become objects below PREFIX; boto3 finds credentials "
        "and AWS_ENDPOINT_URL in the environment; default: none)",
    )


def build_backend(args: argparse.Namespace) -> Backend | None:
    """The session backend the arguments name; None means files under ROOT."""
    if args.backend is None:
        if args.data_dir is not None:
            raise ValueError("--data-dir goes with --backend")
        return None
    if not args.backend.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--backend takes a redis:// URL, got {args.backend!r}")
    if args.data_dir is None:
        raise ValueError("--backend needs --data-dir, the directory shared by the hosts")
    try:
        from ..backends.redis import RedisBackend

        if args.data_dir.startswith("s3://"):
            from ..backends.s3 import S3Store

            bucket, _, prefix = args.data_dir.removeprefix("s3://").partition("/")
            if not bucket:
                raise ValueError(f"--data-dir {args.data_dir!r} names no bucket")
            return RedisBackend(S3Store(bucket, prefix=prefix), url=args.backend)
        return RedisBackend(Path(args.data_dir), url=args.backend)
    except ImportError as exc:
        extra = "s3" if exc.name == "boto3" or "boto3" in str(exc) else "redis"
        raise ValueError(
            f"--backend {args.backend} needs the {extra} client: pip install 'bits-wsgi[{extra}]'"
        ) from exc
