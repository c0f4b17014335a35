"""gunicorn settings for a BITS upload server (Flask, Django, or any wrapped WSGI app).

    gunicorn -c examples/gunicorn.conf.py examples.flask_app:app

Every value is an environment variable away from your deployment's (GUNICORN_BIND, ...).
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")

# BITS needs HTTP/1.1 with keep-alive: Windows keeps one connection for a whole upload. The
# threaded worker keeps connections open; the default sync worker closes after every response.
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count()))
# A thread per in-flight fragment; fragments are streamed, so a thread costs about 1 MiB.
threads = int(os.environ.get("GUNICORN_THREADS", 8))

# Windows sends fragments of up to 13 MB, and an upload-reply notification may take up to
# 290 s before the final Ack. gthread workers heartbeat from their main loop, so this bounds
# stuck workers, not slow requests; keep it above the notification timeout anyway.
timeout = 300
# Let a fragment in flight finish on SIGTERM (a deploy) rather than cut it.
graceful_timeout = 60
# Windows waits for each Ack before sending the next packet and reuses the connection;
# gunicorn's 2 s default drops it between packets of a slow client.
keepalive = 30

# One line per BITS packet comes from the "bits_wsgi" logger; gunicorn's access log repeats it.
accesslog = None
loglevel = "info"

# gunicorn configures only its own loggers: without this, the packet lines (INFO) go nowhere.
# Everything to stderr; BITS_LOG_FORMAT=json makes every line one JSON object, the packet's
# fields as keys (bits_wsgi.wsgi.log_format.JsonFormatter).
_LINE = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
_JSON = os.environ.get("BITS_LOG_FORMAT", "").lower() == "json"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "line": {"()": "bits_wsgi.wsgi.log_format.JsonFormatter"} if _JSON else {"format": _LINE},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "line",
            "stream": "ext://sys.stderr",
        },
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
    },
}

# Sessions live on disk under the upload directory, so any worker can take any packet and a
# restart loses nothing: preloading is safe and saves memory.
preload_app = True
