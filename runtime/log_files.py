"""Every process logs to a rotating file in the session's ``logs/`` directory."""
from __future__ import annotations

import logging
import logging.handlers
import os

MAX_BYTES = 10 * 2**20
BACKUPS = 3


def configure_process_logging(session_dir: str, name: str, level=logging.INFO) -> str:
    path = os.path.join(session_dir, "logs", f"{name}.log")
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name} pid=%(process)d %(name)s: %(message)s"))
    root = logging.getLogger("nebula")
    root.addHandler(handler)
    root.setLevel(level)
    return path
