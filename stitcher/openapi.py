"""The admin API's OpenAPI 3.1 document, built from the same pydantic models that
validate requests (so the document cannot drift from what the API accepts)."""

from __future__ import annotations

import copy
import functools
from typing import Any

from stitcher.admin import BreakRequest
from stitcher.config import ChannelConfig

REF = "#/components/schemas/{model}"


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in (ChannelConfig, BreakRequest):
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Error"] = {
        "type": "object", "required": ["error", "reason"],
        "properties": {
            "error": {"type": "string", "description": "machine-readable code"},
            "reason": {"type": "string", "description": "what is wrong, for a person"},
            "fields": {"type": "array", "description": "422: each bad field and its problem",
                       "items": {"type": "object", "required": ["field", "problem"],
                                 "properties": {"field": {"type": "string"},
                                                "problem": {"type": "string"}}}}}}
    schemas["Channel"] = {
        "type": "object", "required": ["id", "config", "revision", "source"],
        "properties": {"id": {"type": "string"}, "config": {"$ref": REF.format(model="ChannelConfig")},
                       "revision": {"type": "integer", "description": "0: as in the config file"},
                       "source": {"enum": ["file", "api"]},
                       "updated_at": {"type": ["string", "null"]},
                       "updated_by": {"type": ["string", "null"]}}}
    schemas["ChannelPatch"] = {
        "type": "object", "description": "Some fields of ChannelConfig; merged, then the "
                                         "whole config is validated.",
        "properties": copy.deepcopy(schemas["ChannelConfig"]["properties"]),
        "additionalProperties": False}
    schemas["InsertedBreak"] = {
        "type": "object", "required": ["id", "start", "duration", "end"],
        "properties": {k: {} for k in ("id", "event_id", "source", "start", "duration", "end",
                                       "created_by", "created_at", "cancelled",
                                       "cancelled_at", "cancelled_by", "starts_in")}}
    return schemas


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(model: str) -> dict[str, Any]:
    return {"required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}}}


CHANNEL = {"name": "channel", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"}}
_ENTITY_TAG = r'\s*(W/)?("[0-9]{1,9}"|[0-9]{1,9})\s*'
_IF_MATCH = rf"^(\*|{_ENTITY_TAG}(,{_ENTITY_TAG})*)$"
IF_MATCH = {"name": "If-Match", "in": "header", "required": False,
            "description": "the revision (ETag of GET) this change is based on, a list "
                           "of them (one must be current; weak tags never match, RFC "
                           "9110 13.1.1), or * (any current revision: the channel exists)",
            "schema": {"type": "string", "pattern": _IF_MATCH}}
AUTH_ERRORS = {"401": _error("no bearer token"), "403": _error("token not accepted")}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "security": [{"bearer": []}],
            "responses": {**responses, **AUTH_ERRORS}, **extra}


@functools.cache
def _document() -> dict[str, Any]:
    ref = REF.format
    channel_ops = {
        "get": _op("A channel's config and revision", {
            "200": _ok("the channel", {"$ref": ref(model="Channel")}),
            "404": _error("no such channel")}, parameters=[CHANNEL]),
        "put": _op("Replace a channel's config", {
            "200": _ok("replaced", {"$ref": ref(model="Channel")}),
            "400": _error("not a JSON object, or a malformed If-Match"),
            "404": _error("no such channel"),
            "412": _error("If-Match names no current revision"),
            "422": _error("invalid config: each bad field named")},
            parameters=[CHANNEL, IF_MATCH], requestBody=_body("ChannelConfig")),
        "patch": _op("Change some fields of a channel's config", {
            "200": _ok("changed", {"$ref": ref(model="Channel")}),
            "400": _error("not a JSON object, or a malformed If-Match"),
            "404": _error("no such channel"),
            "412": _error("If-Match names no current revision"),
            "422": _error("invalid config: each bad field named")},
            parameters=[CHANNEL, IF_MATCH], requestBody=_body("ChannelPatch")),
        "delete": _op("Remove a channel", {
            "204": _ok("removed"), "400": _error("a malformed If-Match"),
            "404": _error("no such channel"),
            "412": _error("If-Match names no current revision")},
            parameters=[CHANNEL, IF_MATCH]),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "ssai-stitcher admin API", "version": "1",
                 "description": "Channels, breaks inserted by hand, the audit log and the "
                                "console's status. Bearer token: the `admin_token` (or an "
                                "`admin_tokens` entry) of the service config."},
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/admin/channels": {
                "get": _op("Every channel with its config and revision", {
                    "200": _ok("the channels", {"type": "object", "properties": {
                        "channels": {"type": "array", "items": {"$ref": ref(model="Channel")}},
                        "ignored": {"type": "array", "description": (
                            "stored configs this instance cannot validate (another "
                            "version wrote them, or a hand edit), and what it serves "
                            "instead"), "items": {"type": "object", "properties": {
                                "id": {"type": "string"}, "revision": {"type": "integer"},
                                "problems": {"type": "string"},
                                "serving": {"type": "string"}}}}}})}),
                "post": _op("Create a channel", {
                    "201": _ok("created", {"$ref": ref(model="Channel")}),
                    "400": _error("not a JSON object"), "409": _error("the id exists"),
                    "422": _error("invalid config: each bad field named")},
                    requestBody=_body("ChannelConfig")),
            },
            "/admin/channels/{channel}": channel_ops,
            "/admin/channels/{channel}/breaks": {
                "get": _op("Current and upcoming breaks, each cohort's decision and fill", {
                    "200": _ok("the breaks"), "404": _error("no such channel")},
                    parameters=[CHANNEL]),
                "post": _op("Insert a break at the live edge, after it, or at a time", {
                    "201": _ok("inserted", {"$ref": ref(model="InsertedBreak")}),
                    "400": _error("not a JSON object"), "404": _error("no such channel"),
                    "409": _error("overlaps another break, or no live edge yet"),
                    "422": _error("invalid request: each bad field named")},
                    parameters=[CHANNEL], requestBody=_body("BreakRequest")),
            },
            "/admin/channels/{channel}/breaks/{break}": {
                "delete": _op("Cancel an inserted break (before it: dropped; during it: "
                              "ends at the live edge)", {
                    "200": _ok("cancelled", {"$ref": ref(model="InsertedBreak")}),
                    "404": _error("no such break"),
                    "409": _error("not inserted by hand, already cancelled or ended")},
                    parameters=[CHANNEL, {"name": "break", "in": "path", "required": True,
                                          "schema": {"type": "string", "maxLength": 200}}]),
            },
            "/admin/audit": {
                "get": _op("Who changed what, newest first", {
                    "200": _ok("entries"), "400": _error("bad limit")},
                    parameters=[
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                        {"name": "channel", "in": "query", "required": False,
                         "schema": {"type": "string"}}]),
            },
            "/admin/status": {
                "get": _op("What the console shows: health, live edge, breaks, fill, cache", {
                    "200": _ok("status")}),
            },
        },
    }


def document() -> dict[str, Any]:
    return copy.deepcopy(_document())
