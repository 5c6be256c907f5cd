"""Structured logs: one JSON object per line (``log_format: json``).

Each line carries ``time``, ``level``, ``logger``, ``message`` and, where
known, ``channel``, ``cohort``, ``rendition`` and ``break_id``: from the
record's ``extra`` when the call site gives them, else from the request being
served (``stitcher.app.served`` sets :data:`CONTEXT` to the route's
:class:`RouteContext` while it handles a request, and ``asyncio`` tasks started
while serving inherit it, so an ad decision made for a render logs that render's
channel and cohort).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

#: Context of the request being served (None outside a request): field -> value.
CONTEXT: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "stitcher_log_context", default=None)

FIELDS = ("channel", "cohort", "rendition", "break_id", "session", "actor", "action")
_MATCH = {"channel": "channel", "cohort": "cohort", "rid": "rendition", "brk": "break_id",
          "break": "break_id"}
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class ContextFilter(logging.Filter):
    """Copies the request's context onto each record as it is emitted (in the
    request's task), so a handler that formats later still has it."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (CONTEXT.get() or {}).items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        line.update(CONTEXT.get() or {})
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None and not key.startswith("_"):
                line[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class RouteContext(Mapping[str, str]):
    """A request's log fields, read from its route's match info when a line is
    logged: most requests log nothing, and then nothing is computed for them."""

    __slots__ = ("_fields", "_info")

    def __init__(self, info: Mapping[str, str]) -> None:
        self._info = info
        self._fields: dict[str, str] | None = None

    def _get(self) -> dict[str, str]:
        if self._fields is None:
            info = self._info
            self._fields = {field: info[key][:100] for key, field in _MATCH.items()
                            if key in info}
        return self._fields

    def __getitem__(self, key: str) -> str:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def names_context(path: str) -> bool:
    """Whether a route path has a part a log line names (``{channel}``, ``{rid}``
    ...): its requests get a :class:`RouteContext`, the others none."""
    return not {m.group(1) for m in re.finditer(r"\{(\w+)", path)}.isdisjoint(_MATCH)


class ClientErrorFilter(logging.Filter):
    """aiohttp logs a request its parser refused (an over-long header, a bad
    method, a malformed request line) at ERROR with a traceback: the client's
    fault, not ours, and anyone can flood the log with it. One WARNING line
    without the traceback instead, counted by ``count`` (found by a newcomer)."""

    def __init__(self, count: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.count = count

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            # Not the parser's message: it quotes the offending bytes (a header's
            # value, an Authorization token among them).
            record.msg = f"{record.msg}: {type(exc).__name__} ({exc.code})"
            record.exc_info = record.exc_text = None
            if self.count is not None:
                self.count(exc.code)
        return True


def configure(log_format: str, *, verbose: bool = False) -> None:
    """The root logger's format: ``json`` or ``text``."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
