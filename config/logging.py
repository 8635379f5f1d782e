"""Logging helpers the settings' LOGGING names."""

from __future__ import annotations

import logging


class ClientErrorsOnOneLine(logging.Filter):
    """A refused request (a 4xx: a permission denied, a bad host, a missing page) is the client's doing, not
    a fault of the server: log it as one line, without the traceback Django attaches to it. 5xx keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        client_error = isinstance(status, int) and 400 <= status < 500
        if client_error or record.name.startswith("django.security"):
            record.exc_info = None
            record.exc_text = None
        return True
