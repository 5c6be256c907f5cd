"""Exact time arithmetic: EXTINF as Fraction seconds, PDT as aware datetimes.

Durations are kept exact (``Fraction("6.006")``) so sums never drift; the
string is only produced once, when rendering. EXT-X-PROGRAM-DATE-TIME accepts
every ISO 8601 offset form RFC 8216bis 4.4.4.6 allows; a date without a zone
is taken as UTC (what players do).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction

TICKS_PER_SECOND = 90_000
PTS_MODULUS = 1 << 33

_PDT = re.compile(
    r"^(?P<y>\d{4})-?(?P<mo>\d{2})-?(?P<d>\d{2})[T ](?P<h>\d{2}):?(?P<m>\d{2}):?(?P<s>\d{2})"
    r"(?:[.,](?P<frac>\d+))?\s*(?P<tz>Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)


def parse_pdt(text: str) -> datetime | None:
    """Parse an ISO 8601 date-time; ``None`` when it is not one."""
    m = _PDT.match(text.strip())
    if not m:
        return None
    frac = (m.group("frac") or "0")[:6].ljust(6, "0")
    try:
        dt = datetime.fromisoformat(
            f"{m.group('y')}-{m.group('mo')}-{m.group('d')}T"
            f"{m.group('h')}:{m.group('m')}:{m.group('s')}.{frac}"
        )
    except ValueError:
        return None
    tz = m.group("tz")
    if tz is None or tz in "Zz":
        return dt.replace(tzinfo=UTC)
    sign = 1 if tz[0] == "+" else -1
    digits = tz[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return dt.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))


def format_pdt(dt: datetime) -> str:
    """Render a PDT in UTC with millisecond precision, the form players expect.

    A naive datetime is UTC, like a zone-less PDT (``astimezone`` would read it
    in the process's local zone: hls.js#7268's fault, the other way round).
    """
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def micros(seconds: Fraction) -> int:
    """``round(seconds * 10**6)`` (half to even, as ``round`` does), in integers:
    a Fraction product normalises through a gcd first, and break and pod
    arithmetic asks this for every break of a 2-hour window."""
    return micros_of(seconds.numerator, seconds.denominator)


def micros_of(numerator: int, denominator: int) -> int:
    """:func:`micros` of ``numerator / denominator`` seconds (``denominator`` > 0),
    for sums and products not worth building as a Fraction first."""
    q, r = divmod(numerator * 1_000_000, denominator)
    twice = 2 * r
    return q + (twice > denominator or (twice == denominator and q % 2 == 1))


def add_seconds(dt: datetime, seconds: Fraction) -> datetime:
    """``dt + seconds`` rounded to the microsecond (datetime's resolution)."""
    return dt + timedelta(microseconds=micros(seconds))


def seconds_between(a: datetime, b: datetime) -> Fraction:
    """``b - a`` in exact seconds (microsecond resolution)."""
    delta = b - a
    return Fraction(delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds,
                    1_000_000)


def parse_duration(text: str) -> Fraction | None:
    """A decimal duration (``"6.006"``, ``"10"``) as an exact Fraction; None if not one."""
    text = text.strip()
    if not text:
        return None
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value >= 0 else None


def format_duration(value: Fraction, places: int = 3) -> str:
    """Render an EXTINF duration with a fixed number of decimal places."""
    scaled = round(value * 10**places)
    whole, frac = divmod(scaled, 10**places)
    return f"{whole}.{frac:0{places}d}" if places else str(whole)


def ticks_to_seconds(ticks: int) -> Fraction:
    return Fraction(ticks, TICKS_PER_SECOND)
