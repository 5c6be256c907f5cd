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
import binascii
import hashlib
import hmac
import secrets
from collections import OrderedDict
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


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Decode unpadded URL-safe base64, canonical spellings only: padding or
    non-zero trailing bits would give one session several URLs (split caches).
    (binascii directly: the base64 module's checks and copies were a third of a
    new token's verification, which every first request of a session pays.)"""
    raw = text.encode("ascii")  # UnicodeEncodeError is a ValueError
    data = binascii.a2b_base64(raw.translate(_FROM_URLSAFE) + b"=" * (-len(raw) % 4))
    if binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_TO_URLSAFE) != raw:
        raise ValueError("non-canonical base64")
    return data


def _canonical(s: Session) -> bytes:
    # Length-prefixed fields: no separator inside a value can forge another field.
    fields = ["v1", s.key_id, s.session_id, s.channel, s.cohort, str(s.expires)]
    return b"".join(len(f.encode()).to_bytes(2, "big") + f.encode() for f in fields)


class _Hmac:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer pads hashed once:
    a copy of each state per message. ``hmac.digest`` gives the same bytes but
    sets OpenSSL up anew on every call, twice the time, on every reload."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:  # the block size: longer keys are hashed first
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class SessionSigner:
    """Issues and verifies tokens for one set of keys (a new key set, as a restart
    with rotated keys makes, is a new signer: nothing verified under the old one
    carries over).

    Verified tokens are remembered, keyed by the token's exact text (one spelling
    per session: base64 is checked canonical), up to ``cache_size`` most recently
    used: a player reloads its playlist every few seconds with the same URL, and
    a hit skips the base64 and the HMAC. Only a token whose signature verified is
    ever stored (a changed byte is another text: a miss, verified and refused),
    and what can change with time or the URL is checked on every request, hit or
    miss: the channel the URL names and the expiry against ``now``.
    """

    def __init__(self, keys: Mapping[str, str], grace: float = 3600,
                 cache_size: int = 1 << 15) -> None:
        if not keys:
            raise ValueError("at least one session key is required")
        self._macs = {kid: _Hmac(secret.encode()) for kid, secret in keys.items()}
        self._current = next(iter(keys))
        self._grace = grace
        self._verified: OrderedDict[str, Session] = OrderedDict()
        self._cache_size = cache_size
        #: Interned names (key ids, channels, cohorts come from config: a few).
        self._names: dict[str, str] = {}

    def issue(self, channel: str, cohort: str, expires: int) -> tuple[Session, str]:
        session = Session(self._current, secrets.token_hex(8), channel, cohort, expires)
        return session, self.encode(session)

    def encode(self, s: Session) -> str:
        payload = _canonical(s)
        mac = self._macs[s.key_id].digest(payload)[:16]
        return f"{_b64(payload)}.{_b64(mac)}"

    def decode(self, token: str, channel: str, now: float) -> Session:
        """Verify a token for ``channel``; raise :class:`SessionInvalid` with a reason."""
        verified = self._verified
        session = verified.get(token)
        if session is None:
            session = self._verify(token)
            verified[token] = session
            if len(verified) > self._cache_size:
                verified.popitem(last=False)
        else:
            verified.move_to_end(token)
        if session.channel != channel:
            raise SessionInvalid("session token belongs to another channel")
        if session.expires + self._grace < now:
            raise SessionInvalid("session expired", status=410)
        return session

    def _verify(self, token: str) -> Session:
        """The session a token's signature vouches for (channel and expiry unchecked)."""
        try:
            payload_b64, mac_b64 = token.split(".")
            payload, mac = _unb64(payload_b64), _unb64(mac_b64)
            fields: list[str] = []
            i, end = 0, len(payload)
            while i < end:  # each field: its length (2 bytes, big-endian), its bytes
                # (int.from_bytes of a slice, as before, for a 1-byte tail: the same
                # fields, so the same refusal; a third of a new token's parse)
                j = i + 2 + (payload[i] << 8 | payload[i + 1] if i + 1 < end
                             else payload[i])
                fields.append(payload[i + 2:j].decode())
                i = j
            version, kid, sid, ch, cohort, expires_text = fields
            expires = int(expires_text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SessionInvalid("malformed session token") from exc
        if version != "v1":
            raise SessionInvalid("unsupported session token version")
        mac_of = self._macs.get(kid)
        if mac_of is None:
            raise SessionInvalid("session token signed with an unknown key")
        expected = mac_of.digest(payload)[:16]
        if not hmac.compare_digest(expected, mac):
            raise SessionInvalid("session token signature does not match")
        names = self._names
        if len(names) < 4096:  # signed values, so config-bounded; the cap is for safety
            kid, ch, cohort = names.setdefault(kid, kid), names.setdefault(ch, ch), \
                names.setdefault(cohort, cohort)
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
