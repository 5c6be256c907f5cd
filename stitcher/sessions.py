"""Signed session tokens and cohort assignment.

A session token travels in the URL path so relative URIs keep it. It is an
HMAC-SHA256 over a canonical encoding of (key id, session id, channel, cohort,
expiry), checked with a constant-time compare. Keys rotate by id: new tokens
are signed with the first configured key, and every configured key verifies
until its tokens expire. Players never refresh their URL, so expiry is generous
and a grace period applies.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from stitcher.config import ChannelConfig
from stitcher.errors import SessionInvalid

DEFAULT_COHORT = "default"


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str
    session_id: str
    channel: str
    cohort: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode unpadded URL-safe base64, canonical spellings only: padding or
    non-zero trailing bits would give one session several URLs (split caches)."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("non-canonical base64")
    return data


def _canonical(s: Session) -> bytes:
    # Length-prefixed fields: no separator inside a value can forge another field.
    fields = ["v1", s.key_id, s.session_id, s.channel, s.cohort, str(s.expires)]
    return b"".join(len(f.encode()).to_bytes(2, "big") + f.encode() for f in fields)


class SessionSigner:
    def __init__(self, keys: Mapping[str, str], grace: float = 3600) -> None:
        if not keys:
            raise ValueError("at least one session key is required")
        self._keys = {kid: secret.encode() for kid, secret in keys.items()}
        self._current = next(iter(keys))
        self._grace = grace

    def issue(self, channel: str, cohort: str, expires: int) -> tuple[Session, str]:
        session = Session(self._current, secrets.token_hex(8), channel, cohort, expires)
        return session, self.encode(session)

    def encode(self, s: Session) -> str:
        payload = _canonical(s)
        mac = hmac.digest(self._keys[s.key_id], payload, "sha256")[:16]
        return f"{_b64(payload)}.{_b64(mac)}"

    def decode(self, token: str, channel: str, now: float) -> Session:
        """Verify a token for ``channel``; raise :class:`SessionInvalid` with a reason."""
        try:
            payload_b64, mac_b64 = token.split(".")
            payload, mac = _unb64(payload_b64), _unb64(mac_b64)
            fields: list[str] = []
            i = 0
            while i < len(payload):
                n = int.from_bytes(payload[i:i + 2], "big")
                fields.append(payload[i + 2:i + 2 + n].decode())
                i += 2 + n
            version, kid, sid, ch, cohort, expires_text = fields
            expires = int(expires_text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SessionInvalid("malformed session token") from exc
        if version != "v1":
            raise SessionInvalid("unsupported session token version")
        key = self._keys.get(kid)
        if key is None:
            raise SessionInvalid("session token signed with an unknown key")
        # One-shot HMAC (OpenSSL in one call): every playlist reload checks a token.
        expected = hmac.digest(key, payload, "sha256")[:16]
        if not hmac.compare_digest(expected, mac):
            raise SessionInvalid("session token signature does not match")
        if ch != channel:
            raise SessionInvalid("session token belongs to another channel")
        if expires + self._grace < now:
            raise SessionInvalid("session expired", status=410)
        return Session(kid, sid, ch, cohort, expires)


def cohort_for(channel: ChannelConfig, attributes: Mapping[str, str]) -> str:
    """Map session attributes to a cohort key bounded by the channel's rules."""
    if not channel.cohorts:
        return DEFAULT_COHORT
    parts = []
    for rule in channel.cohorts:
        value = attributes.get(rule.attribute, rule.default)
        parts.append(value if value in rule.values else rule.default)
    return ".".join(parts)


def is_cohort(channel: ChannelConfig, cohort: str) -> bool:
    """Is ``cohort`` one the channel's rules can produce (defence in depth: a
    validly signed token still cannot name a cohort outside the config)?"""
    if not channel.cohorts:
        return cohort == DEFAULT_COHORT
    parts = cohort.split(".")
    return len(parts) == len(channel.cohorts) and all(
        part in rule.values for part, rule in zip(parts, channel.cohorts))


def cohort_attributes(channel: ChannelConfig, cohort: str) -> dict[str, str]:
    if not channel.cohorts or cohort == DEFAULT_COHORT:
        return {}
    return dict(zip((r.attribute for r in channel.cohorts), cohort.split(".")))
