"""Framework sugar: Flask's init_app and the shared settings format."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from bits_wsgi import BITSMiddleware
from bits_wsgi.config import directories_from_settings
from bits_wsgi.contrib.flask import init_app

from .conftest import BitsClient


def test_flask_init_app_reads_the_config(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config["BITS_WSGI"] = {"upload_dir": str(tmp_path), "prefix": "/in/"}

    @app.get("/")
    def index() -> str:
        return "flask"

    bits = init_app(app, allow_overwrites=True)
    assert app.wsgi_app is bits and app.extensions["bits_wsgi"] is bits
    assert bits.servers[0].directory.allow_overwrites
    client = BitsClient(app, path="/in/x.bin")
    client.upload(b"via flask")
    assert (tmp_path / "x.bin").read_bytes() == b"via flask"
    assert client.test.get("/").body == b"flask"


def test_several_directories_from_settings(tmp_path: Path) -> None:
    directories = directories_from_settings(
        {
            "directories": [
                {"upload_dir": tmp_path / "a", "prefix": "/a/"},
                {
                    "upload_dir": str(tmp_path / "b"),
                    "prefix": "/b/",
                    "error_headers": ["BITS-Error"],
                },
            ]
        }
    )
    assert [d.prefix for d in directories] == ["/a/", "/b/"]
    assert directories[1].error_headers == ("BITS-Error",)
    assert isinstance(BITSMiddleware(lambda e, s: [], directories=directories), BITSMiddleware)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"prefix": "/x/"},
        {"upload_dir": "/tmp/x", "unknown_option": 1},
        {"directories": []},
        {"directories": [{"upload_dir": "/tmp/x"}], "prefix": "/y/"},
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        directories_from_settings(settings)
