"""Credentials in URIs are never shown: pages, health answers, errors, audit records and logs.

A tracking URI such as `postgresql://mlflow:s3cret@db/mlflow` or a presigned URL's
`X-Amz-Signature=...` must not reach an anonymous reader, a log collector or an error body. One
rule, applied where text leaves a process: the user information of any `scheme://` URI becomes
`***`, and so does the value of any query parameter whose name says it is a secret.
"""

from __future__ import annotations

import logging
import re

HIDDEN = "***"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/?#@\s\"'<>]+@")
_SECRET_PARAMETER = re.compile(
    r"(?i)([?&;][^=&;#\s\"'<>]*(?:token|passw|secret|key|signature|credential|auth|sig\b)"
    r"[^=&;#\s\"'<>]*=)[^&;#\s\"'<>]+"
)


def redact(text: str) -> str:
    """Return `text` with the credentials of every URI in it replaced by `***`."""
    if "://" not in text and "=" not in text:
        return text  # the usual case, at no cost
    return _SECRET_PARAMETER.sub(rf"\1{HIDDEN}", _USERINFO.sub(rf"\1{HIDDEN}@", text))


class RedactingFilter(logging.Filter):
    """Redact each log record's message (its arguments merged in) before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message; never drop a record."""
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_logs() -> None:
    """Make every handler of the root logger redact what it writes."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(given, RedactingFilter) for given in handler.filters):
            handler.addFilter(RedactingFilter())
