"""The verified-token cache of :class:`SessionSigner`: a hit must never let through
what a full verification refuses (a tampered, expired, cross-channel or
rotated-out token), and the precomputed HMAC is the standard one."""

from __future__ import annotations

import base64
import hmac
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stitcher.errors import SessionInvalid
from stitcher.sessions import Session, SessionSigner, _canonical, _Hmac, _unb64

KEYS = {"k2": "second-key", "k1": "first-key"}
GRACE = 3600
NOW = 1_900_000_000


def _refused(signer: SessionSigner, token: str, channel: str = "live1",
             now: float = NOW) -> SessionInvalid:
    with pytest.raises(SessionInvalid) as info:
        signer.decode(token, channel, now)
    return info.value


@pytest.mark.parametrize("size", [0, 1, 17, 63, 64, 65, 200])
def test_precomputed_hmac_is_rfc_2104(size: int) -> None:
    key, message = os.urandom(size), os.urandom(3 * size + 1)
    assert _Hmac(key).digest(message) == hmac.digest(key, message, "sha256")


def test_tokens_are_the_documented_hmac() -> None:
    """The wire format is unchanged: the first 16 bytes of HMAC-SHA256 over the
    canonical payload (tokens issued before the cache keep working)."""
    signer = SessionSigner(KEYS)
    session, token = signer.issue("live1", "fr.tv", NOW + 60)
    _payload, mac = token.split(".")
    expected = hmac.digest(b"second-key", _canonical(session), "sha256")[:16]
    assert base64.urlsafe_b64decode(mac + "==") == expected
    assert signer.decode(token, "live1", NOW) == session


def test_a_cached_token_still_expires() -> None:
    signer = SessionSigner(KEYS, grace=GRACE)
    session, token = signer.issue("live1", "fr.tv", NOW + 60)
    assert signer.decode(token, "live1", NOW) == session  # verified, now cached
    assert signer.decode(token, "live1", NOW + 60 + GRACE) == session  # in the grace
    error = _refused(signer, token, now=NOW + 60 + GRACE + 1)
    assert error.status == 410 and "expired" in error.reason


def test_a_cached_token_is_still_bound_to_its_channel() -> None:
    signer = SessionSigner(KEYS)
    _session, token = signer.issue("live1", "fr.tv", NOW + 60)
    signer.decode(token, "live1", NOW)
    assert "another channel" in _refused(signer, token, channel="live2").reason
    assert signer.decode(token, "live1", NOW).channel == "live1"


def _tampered(token: str) -> dict[str, str]:
    payload, mac = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=="))
    raw[-1] ^= 1  # the last digit of the expiry
    changed = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    flipped = ("B" if mac[0] != "B" else "C") + mac[1:]
    return {"payload": f"{changed}.{mac}", "signature": f"{payload}.{flipped}",
            "padded": f"{token}=", "truncated": f"{payload}.{mac[:16]}"}


def test_tampered_spellings_of_a_cached_token_are_refused() -> None:
    """Each is another text than the cached one: verified in full, refused, and not
    remembered (asking twice gives the same refusal)."""
    signer = SessionSigner(KEYS)
    _session, token = signer.issue("live1", "fr.tv", NOW + 60)
    signer.decode(token, "live1", NOW)
    for name, bad in _tampered(token).items():
        for _ in range(2):
            error = _refused(signer, bad)
            assert error.status == 403, name
            assert "signature" in error.reason or "malformed" in error.reason, (name, error)
    assert signer.decode(token, "live1", NOW).cohort == "fr.tv"


def test_a_rotated_out_key_is_refused_even_after_its_tokens_were_cached() -> None:
    """Retiring a key is a new key set: a signer for it (as ``stitcher serve`` builds
    at start) refuses the old key's tokens however often an earlier signer with
    that key accepted them."""
    old = SessionSigner(KEYS)
    _session, token = SessionSigner({"k1": KEYS["k1"]}).issue("live1", "fr.tv", NOW + 60)
    for _ in range(3):
        assert old.decode(token, "live1", NOW).key_id == "k1"
    rotated = SessionSigner({"k2": KEYS["k2"]})
    assert "unknown key" in _refused(rotated, token).reason
    # The same key id with another secret (a key replaced under its id): refused too.
    replaced = SessionSigner({"k2": KEYS["k2"], "k1": "another-first-key"})
    assert "signature" in _refused(replaced, token).reason


def test_the_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    signer = SessionSigner(KEYS, cache_size=3)
    tokens = [signer.issue("live1", "fr.tv", NOW + 60)[1] for _ in range(4)]
    for token in tokens[:3]:
        signer.decode(token, "live1", NOW)
    signer.decode(tokens[0], "live1", NOW)  # used again: tokens[1] is the oldest now
    signer.decode(tokens[3], "live1", NOW)
    assert list(signer._verified) == [tokens[2], tokens[0], tokens[3]]
    # An evicted token is verified again, not refused.
    assert signer.decode(tokens[1], "live1", NOW).channel == "live1"
    assert len(signer._verified) == 3


def test_refused_tokens_are_never_remembered() -> None:
    signer = SessionSigner(KEYS)
    forged = SessionSigner({"k2": "a-guessed-key"}).encode(
        Session("k2", "f00d", "live1", "fr.tv", NOW + 60))
    _refused(signer, forged)
    _refused(signer, "not-a-token")
    assert not signer._verified


def _reference_unb64(text: str) -> bytes | None:
    """The base64 module's decoding with the canonical check (what ``_unb64`` did)."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    return data if base64.urlsafe_b64encode(data).rstrip(b"=").decode() == text else None


_B64ISH = st.text(alphabet="ABCXYZabcxyz0189-_+/=. \né", max_size=24)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(_B64ISH, st.binary(max_size=18).map(
    lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode())))
def test_token_base64_decodes_exactly_the_canonical_spellings(text: str) -> None:
    """``_unb64`` (binascii, for speed) accepts exactly what the base64 module's
    decoding plus the canonical check accepted, with the same bytes: padding,
    ``+``/``/``, stray characters and non-zero trailing bits are refused."""
    expected = _reference_unb64(text)
    try:
        got: bytes | None = _unb64(text)
    except ValueError:
        got = None
    assert got == expected


def _reference_fields(payload: bytes) -> list[str] | None:
    """The payload's fields as the signer read them before (``int.from_bytes`` of
    each 2-byte length), None where that raised."""
    fields: list[str] = []
    i = 0
    try:
        while i < len(payload):
            n = int.from_bytes(payload[i:i + 2], "big")
            fields.append(payload[i + 2:i + 2 + n].decode())
            i += 2 + n
    except UnicodeDecodeError:
        return None
    return fields


def _acceptable(fields: list[str] | None) -> bool:
    """Whether those fields make a session the signer must accept (key k1, channel
    ``ch``, an expiry ``int`` reads, not past at time 0 with the hour's grace)."""
    if fields is None or len(fields) != 6:
        return False
    version, kid, _sid, channel, _cohort, expires = fields
    try:
        at = int(expires)
    except ValueError:
        return False
    return version == "v1" and kid == "k1" and channel == "ch" and at + 3600 >= 0


_FIELD = st.one_of(st.sampled_from(["v1", "v2", "k1", "ch", "default", "1900000000", "x"]),
                   st.text(max_size=5))


@settings(max_examples=500, deadline=None)
@given(fields=st.lists(_FIELD, max_size=8), tail=st.binary(max_size=3),
       lengths=st.lists(st.integers(0, 300), max_size=2))
def test_a_signed_payload_of_any_shape_reads_as_before_or_is_refused(
        fields: list[str], tail: bytes, lengths: list[int]) -> None:
    """Whatever bytes carry a valid signature (short tails, lengths past the end,
    extra or missing fields, bad UTF-8), verifying gives the session the fields
    spell or refuses it (SessionInvalid): never another exception, never other
    fields than the length-prefixed reading."""
    payload = b"".join(len(f.encode()).to_bytes(2, "big") + f.encode() for f in fields)
    payload += b"".join(n.to_bytes(2, "big") + b"ab" for n in lengths) + tail
    signer = SessionSigner({"k1": "secret"})
    mac = _Hmac(b"secret").digest(payload)[:16]
    token = ".".join(base64.urlsafe_b64encode(b).rstrip(b"=").decode() for b in (payload, mac))
    expected = _reference_fields(payload)
    try:
        session = signer.decode(token, "ch", 0.0)
    except SessionInvalid:
        assert not _acceptable(expected), expected
        return
    assert expected is not None and expected[0] == "v1"
    assert [expected[1], expected[2], expected[3], expected[4], int(expected[5])] == [
        session.key_id, session.session_id, session.channel, session.cohort,
        session.expires]
