"""The service's exception hierarchy, mapped to HTTP in one place (``to_response``).

Player-facing errors carry a JSON body with a machine-readable ``error`` and a
human ``reason``; upstream trouble never becomes a 5xx once a good playlist
exists (the last good one is served instead); a cold start with the origin
down is a 503 with Retry-After.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import ClassVar

from aiohttp import web


class StitcherError(Exception):
    status = 500
    code = "internal"

    #: Extra response headers (e.g. ``WWW-Authenticate`` on a 401).
    headers: ClassVar[Mapping[str, str]] = {}

    def __init__(self, reason: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        #: Validation errors: each bad field and its problem (a 422's body lists them).
        self.fields: list[dict[str, str]] | None = None


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
    headers: ClassVar[Mapping[str, str]] = {
        "WWW-Authenticate": 'Bearer realm="stitcher admin"'}


class Forbidden(StitcherError):
    status = 403
    code = "forbidden"


class Conflict(StitcherError):
    status = 409
    code = "conflict"


class PreconditionFailed(StitcherError):
    status = 412
    code = "revision_mismatch"


class Invalid(StitcherError):
    """A body that fails validation: ``fields`` names each bad field and its problem."""

    status = 422
    code = "invalid"

    def __init__(self, reason: str, fields: list[dict[str, str]]) -> None:
        super().__init__(reason)
        self.fields = fields


class OriginUnavailable(StitcherError):
    """The origin failed and there is no last good playlist to serve."""

    status = 503
    code = "origin_unavailable"


class StoreUnavailable(StitcherError):
    """The shared store (Redis) is unreachable where a request must write to it: an
    ad segment request whose beacons cannot be queued. A 503 with Retry-After, so
    the player's retry (players retry segments) fires them once the store is back;
    redirecting anyway would lose them (a lost first segment loses the whole ad)."""

    status = 503
    code = "store_unavailable"


class UpstreamError(StitcherError):
    """An upstream (origin, ad server) answered badly; callers fall back."""

    status = 502
    code = "upstream"


def to_response(exc: StitcherError) -> web.Response:
    headers = {"Cache-Control": "no-store", **exc.headers}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    code = exc.code if type(exc) is not StitcherError else {
        404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, exc.code)
    data: dict[str, object] = {"error": code, "reason": exc.reason}
    if exc.fields is not None:
        data["fields"] = exc.fields
    body = json.dumps(data)
    return web.Response(status=exc.status, text=body, content_type="application/json",
                        headers=headers)
