"""The service's exception hierarchy, mapped to HTTP in one place (``to_response``).

Player-facing errors carry a JSON body with a machine-readable ``error`` and a
human ``reason``; upstream trouble never becomes a 5xx once a good playlist
exists (the last good one is served instead); a cold start with the origin
down is a 503 with Retry-After.
"""

from __future__ import annotations

import json

from aiohttp import web


class StitcherError(Exception):
    status = 500
    code = "internal"

    def __init__(self, reason: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status
        self.retry_after = retry_after


class NotFound(StitcherError):
    status = 404
    code = "not_found"


class BadRequest(StitcherError):
    status = 400
    code = "bad_request"


class SessionInvalid(StitcherError):
    status = 403
    code = "session_invalid"


class Unauthorized(StitcherError):
    status = 401
    code = "unauthorized"


class OriginUnavailable(StitcherError):
    """The origin failed and there is no last good playlist to serve."""

    status = 503
    code = "origin_unavailable"


class UpstreamError(StitcherError):
    """An upstream (origin, ad server) answered badly; callers fall back."""

    status = 502
    code = "upstream"


def to_response(exc: StitcherError) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    code = exc.code if type(exc) is not StitcherError else {
        404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, exc.code)
    body = json.dumps({"error": code, "reason": exc.reason})
    return web.Response(status=exc.status, text=body, content_type="application/json",
                        headers=headers)
