"""Ad-marker dialects normalised into one model.

Each dialect's tags on a segment become :class:`Signal`s (dispatch on the exact
tag name, never a chain of ``startswith``). :func:`observe` walks a playlist's
segments and turns signals into :class:`Observation`s of break openings and
closings at segment boundaries; :mod:`manifests.breaks` merges observations from
successive reloads and renditions into the channel's :class:`~manifests.breaks.Break`s.

A playlist carries no segment PTS, so a splice point is the marker's position
(the segment it is attached to), or for EXT-X-DATERANGE the first segment
boundary at or after START-DATE.
"""

from __future__ import annotations

import enum
import logging
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fractions import Fraction
from typing import cast
from urllib.parse import unquote

from manifests.attributes import AttributeList
from manifests.columns import SegmentTable
from manifests.errors import ManifestError
from manifests.playlist import MediaPlaylist, Segment
from manifests.timing import add_seconds, parse_duration, parse_pdt, ticks_to_seconds

log = logging.getLogger(__name__)

_ISO_DURATION = re.compile(r"^PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$")

# Tag names, literal.
EXT_X_CUE_OUT = "#EXT-X-CUE-OUT"
EXT_X_CUE_OUT_CONT = "#EXT-X-CUE-OUT-CONT"
EXT_X_CUE_IN = "#EXT-X-CUE-IN"
EXT_X_CUE = "#EXT-X-CUE"  # Adobe Primetime
EXT_X_CUE_CONT = "#EXT-X-CUE-CONT"
EXT_X_CUE_SPAN = "#EXT-X-CUE-SPAN"  # Envivio / MediaKind
EXT_OATCLS_SCTE35 = "#EXT-OATCLS-SCTE35"
EXT_X_SCTE35 = "#EXT-X-SCTE35"
EXT_SCTE35 = "#EXT-SCTE35"
EXT_X_SPLICEPOINT_SCTE35 = "#EXT-X-SPLICEPOINT-SCTE35"
EXT_X_DATERANGE = "#EXT-X-DATERANGE"
EXT_X_ASSET = "#EXT-X-ASSET"

MARKER_TAGS = frozenset({
    EXT_X_CUE_OUT, EXT_X_CUE_OUT_CONT, EXT_X_CUE_IN, EXT_X_CUE, EXT_X_CUE_CONT, EXT_X_CUE_SPAN,
    EXT_OATCLS_SCTE35, EXT_X_SCTE35, EXT_SCTE35, EXT_X_SPLICEPOINT_SCTE35, EXT_X_ASSET,
})

# SCTE 35 Table 22 segmentation_type_id values that matter for breaks.
BREAK_START, BREAK_END = 0x22, 0x23
PROVIDER_AD_START, PROVIDER_AD_END = 0x30, 0x31
DISTRIBUTOR_AD_START, DISTRIBUTOR_AD_END = 0x32, 0x33
PROVIDER_PO_START, PROVIDER_PO_END = 0x34, 0x35
DISTRIBUTOR_PO_START, DISTRIBUTOR_PO_END = 0x36, 0x37
PROVIDER_AD_BLOCK_START, PROVIDER_AD_BLOCK_END = 0x38, 0x39
DISTRIBUTOR_AD_BLOCK_START, DISTRIBUTOR_AD_BLOCK_END = 0x3A, 0x3B

#: Types that open a break by default; ad start types open one only when not nested.
DEFAULT_OPENING_TYPES = frozenset({BREAK_START, PROVIDER_PO_START, DISTRIBUTOR_PO_START})
DEFAULT_NESTED_TYPES = frozenset({PROVIDER_AD_START, DISTRIBUTOR_AD_START})
END_OF = {
    BREAK_START: BREAK_END, PROVIDER_AD_START: PROVIDER_AD_END,
    DISTRIBUTOR_AD_START: DISTRIBUTOR_AD_END, PROVIDER_PO_START: PROVIDER_PO_END,
    DISTRIBUTOR_PO_START: DISTRIBUTOR_PO_END, PROVIDER_AD_BLOCK_START: PROVIDER_AD_BLOCK_END,
    DISTRIBUTOR_AD_BLOCK_START: DISTRIBUTOR_AD_BLOCK_END,
}


class SignalKind(enum.Enum):
    OUT = "out"        # a break starts at this segment
    CONT = "cont"      # this segment is inside a break (possibly joined mid-break)
    IN = "in"          # content resumes at this segment
    CANCEL = "cancel"  # a previously signalled event is cancelled
    POINT = "point"    # a zero-duration splice point: nothing is replaced


@dataclass(frozen=True, slots=True)
class Signal:
    """One marker, whatever its dialect, as it applies to one segment."""

    kind: SignalKind
    dialect: str
    event_id: str | None = None
    planned_duration: Fraction | None = None
    elapsed: Fraction | None = None
    #: EXT-X-DATERANGE times: the splice is at the first boundary at/after ``start``.
    #: ``end`` is END-DATE only; ``duration`` is DURATION (same-ID tags join in :func:`observe`).
    start: datetime | None = None
    end: datetime | None = None
    duration: Fraction | None = None
    segmentation_type_id: int | None = None
    upid: str | None = None
    cue: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    #: The cue's splice time, pts_adjustment applied (33-bit ticks, SCTE 35 9.6).
    pts: int | None = None


@dataclass(frozen=True, slots=True)
class MarkerPolicy:
    """Per-channel choices about which signals open breaks."""

    opening_types: frozenset[int] = DEFAULT_OPENING_TYPES
    nested_types: frozenset[int] = DEFAULT_NESTED_TYPES


@dataclass
class MarkerErrors:
    """Markers, or parts of one, that could not be understood: logged and counted,
    never fatal (what was read of them still counts: a CUE-OUT with an unreadable
    duration still opens a break, planned to the policy's maximum)."""

    items: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        log.warning("ad marker not understood: %s", message)
        self.items.append(message)


Handler = Callable[[str | None, Segment, MarkerPolicy, MarkerErrors], list[Signal]]


def _cue_out(value: str | None, seg: Segment, policy: MarkerPolicy,
             errors: MarkerErrors) -> list[Signal]:
    # Forms: bare; ":30"; ":30.000 "; ":DURATION=30,BREAKID=..."; ':30,CUE="<b64>"'.
    duration: Fraction | None = None
    event_id: str | None = None
    cue: str | None = None
    if value and value.strip():
        # A bare duration may lead an attribute list (':30,CUE="..."'): split it off
        # first, the attribute-list grammar has no unnamed values.
        head, _, rest = value.partition(",")
        lead = head.strip() if "=" not in head else None
        attrs = _attrs(rest if lead is not None else value, errors)
        if attrs is not None:
            bare = lead if lead is not None else attrs.get("")
            duration = attrs.decimal("DURATION") or (parse_duration(bare) if bare else None)
            event_id = attrs.string("BREAKID") or attrs.string("ID")
            cue = attrs.string("CUE")
            if duration is None and (bare is not None or _unreadable(attrs, "DURATION")):
                errors.add(f"EXT-X-CUE-OUT with an unreadable duration {value!r}")
    # Envivio / MediaKind put the cue itself in CUE="<b64>": it names the event.
    pts: int | None = None
    for sig in _from_cue(cue, EXT_X_CUE_OUT, policy, errors) if cue else []:
        if sig.kind is SignalKind.OUT:
            event_id = event_id or sig.event_id
            duration = duration if duration is not None else sig.planned_duration
            pts = sig.pts
            break
    return [Signal(SignalKind.OUT, EXT_X_CUE_OUT, event_id=event_id, planned_duration=duration,
                   cue=cue, pts=pts)]


def _cue_out_cont(value: str | None, seg: Segment, policy: MarkerPolicy,
                  errors: MarkerErrors) -> list[Signal]:
    # Forms: "8.308/30" (Elemental), "ElapsedTime=8,Duration=30,SCTE35=..." or bare.
    # The SCTE35 payload is kept byte-exact (trailing '=' padding included) but not
    # decoded: it repeats the opening cue, and documentation samples elide it.
    elapsed = duration = None
    cue: str | None = None
    if value and value.strip():
        text = value.strip()
        if "=" not in text and "/" in text:
            e, _, d = text.partition("/")
            elapsed, duration = parse_duration(e), parse_duration(d)
            if elapsed is None or duration is None:
                errors.add(f"EXT-X-CUE-OUT-CONT with an unreadable elapsed/duration {value!r}")
        else:
            attrs = _attrs(text, errors)
            if attrs is not None:
                elapsed = attrs.decimal("ElapsedTime")
                duration = attrs.decimal("Duration")
                cue = attrs.string("SCTE35")
                if (_unreadable(attrs, "ElapsedTime") or _unreadable(attrs, "Duration")
                        or (elapsed is None and duration is None and cue is None)):
                    # (still a CONT: inside a break it continues it, as a bare one does)
                    errors.add(f"EXT-X-CUE-OUT-CONT with nothing readable in {value!r}"
                               if elapsed is None and duration is None and cue is None
                               else f"EXT-X-CUE-OUT-CONT with an unreadable time {value!r}")
    return [Signal(SignalKind.CONT, EXT_X_CUE_OUT_CONT, elapsed=elapsed,
                   planned_duration=duration, cue=cue)]


def _cue_in(value: str | None, seg: Segment, policy: MarkerPolicy,
            errors: MarkerErrors) -> list[Signal]:
    return [Signal(SignalKind.IN, EXT_X_CUE_IN)]


def _adobe_cue(value: str | None, seg: Segment, policy: MarkerPolicy,
               errors: MarkerErrors) -> list[Signal]:
    attrs = _attrs(value or "", errors)
    if attrs is None:
        return []
    kind = (attrs.string("TYPE") or "").lower()
    event_id = attrs.string("ID")
    duration = attrs.decimal("DURATION")
    elapsed = attrs.decimal("ELAPSED")
    if kind == "spliceout":
        # Some packagers repeat the SpliceOut on every break segment with ELAPSED:
        # that is a continuation (a join point), not a new opening.
        if elapsed:
            return [Signal(SignalKind.CONT, EXT_X_CUE, event_id=event_id,
                           planned_duration=duration, elapsed=elapsed)]
        return [Signal(SignalKind.OUT, EXT_X_CUE, event_id=event_id, planned_duration=duration)]
    if kind == "splicein":
        return [Signal(SignalKind.IN, EXT_X_CUE, event_id=event_id)]
    if kind == "spliceinsert":
        # A splice point with no replacement unless a duration is given.
        if duration:
            return [Signal(SignalKind.OUT, EXT_X_CUE, event_id=event_id,
                           planned_duration=duration)]
        return [Signal(SignalKind.POINT, EXT_X_CUE, event_id=event_id)]
    errors.add(f"EXT-X-CUE with unknown TYPE {attrs.string('TYPE')!r}")
    return []


def _adobe_cue_cont(value: str | None, seg: Segment, policy: MarkerPolicy,
                    errors: MarkerErrors) -> list[Signal]:
    attrs = _attrs(value or "", errors)
    if attrs is None:
        return []
    return [Signal(SignalKind.CONT, EXT_X_CUE_CONT, event_id=attrs.string("ID"),
                   elapsed=attrs.decimal("AVAIL-DUR-ELAPSED") or attrs.decimal("ELAPSED"),
                   planned_duration=attrs.decimal("DURATION"))]


def _cue_span(value: str | None, seg: Segment, policy: MarkerPolicy,
              errors: MarkerErrors) -> list[Signal]:
    # Vendor span tags count time from the signal: TIMEFROMSIGNAL is the elapsed time.
    attrs = _attrs(value or "", errors)
    if attrs is None:
        return []
    return [Signal(SignalKind.CONT, EXT_X_CUE_SPAN, event_id=attrs.string("ID"),
                   elapsed=_clock(attrs.string("TIMEFROMSIGNAL")))]


def _oatcls(value: str | None, seg: Segment, policy: MarkerPolicy,
            errors: MarkerErrors) -> list[Signal]:
    return _from_cue((value or "").strip(), EXT_OATCLS_SCTE35, policy, errors)


def _splicepoint(value: str | None, seg: Segment, policy: MarkerPolicy,
                 errors: MarkerErrors) -> list[Signal]:
    return _from_cue((value or "").strip(), EXT_X_SPLICEPOINT_SCTE35, policy, errors)


def _x_scte35(value: str | None, seg: Segment, policy: MarkerPolicy,
              errors: MarkerErrors, dialect: str = EXT_X_SCTE35) -> list[Signal]:
    attrs = _attrs(value or "", errors)
    if attrs is None:
        return []
    event_id = attrs.string("ID")
    if (attrs.string("CUE-IN") or "").upper() == "YES":
        return [Signal(SignalKind.IN, dialect, event_id=event_id, cue=attrs.string("CUE"))]
    cue_out = (attrs.string("CUE-OUT") or "").upper()
    duration = attrs.decimal("DURATION")
    if cue_out == "CONT":
        return [Signal(SignalKind.CONT, dialect, event_id=event_id, planned_duration=duration,
                       elapsed=attrs.decimal("ELAPSED"))]
    cue = attrs.string("CUE")
    signals = _from_cue(cue, dialect, policy, errors) if cue else []
    if cue_out == "YES" and not any(s.kind is SignalKind.OUT for s in signals):
        signals = [Signal(SignalKind.OUT, dialect, event_id=event_id, planned_duration=duration,
                          cue=cue)]
    return [_with_id(s, event_id) for s in signals]


def _ext_scte35(value: str | None, seg: Segment, policy: MarkerPolicy,
                errors: MarkerErrors) -> list[Signal]:
    return _x_scte35(value, seg, policy, errors, EXT_SCTE35)


def _daterange(value: str | None, seg: Segment, policy: MarkerPolicy,
               errors: MarkerErrors) -> list[Signal]:
    # RFC 8216bis 4.4.5.1: tags with the same ID describe one range, so a closing
    # tag may carry only DURATION or END-DATE (Elemental: no START-DATE at all).
    # The raw values are kept here; :func:`observe` joins them by ID. Timing comes
    # from these attributes, never from the SCTE35-OUT/IN bytes (RFC 8216's own
    # example bytes do not decode).
    attrs = _attrs(value or "", errors)
    if attrs is None:
        return []
    event_id = attrs.string("ID")
    start = parse_pdt(attrs.string("START-DATE") or "")
    end = parse_pdt(attrs.string("END-DATE") or "")
    duration = attrs.decimal("DURATION")
    planned = attrs.decimal("PLANNED-DURATION")
    if "SCTE35-OUT" in attrs:
        return [Signal(SignalKind.OUT, EXT_X_DATERANGE, event_id=event_id,
                       planned_duration=planned if planned is not None else duration,
                       start=start, end=end, duration=duration,
                       cue=attrs.string("SCTE35-OUT"))]
    if "SCTE35-IN" in attrs:
        return [Signal(SignalKind.IN, EXT_X_DATERANGE, event_id=event_id,
                       start=start, end=end, duration=duration,
                       cue=attrs.string("SCTE35-IN"))]
    if "SCTE35-CMD" in attrs:
        cue = attrs.string("SCTE35-CMD") or ""
        signals = _from_cue(cue, EXT_X_DATERANGE, policy, errors)
        return [_with_id(s, event_id, start=start) for s in signals]
    return []  # other DATERANGEs (interstitials, metadata) are not ad markers


def _asset(value: str | None, seg: Segment, policy: MarkerPolicy,
           errors: MarkerErrors) -> list[Signal]:
    attrs = _attrs(value or "", errors)
    if attrs is None:
        return []
    # Elemental URL-encodes the values (EPISODE="Episode%20Name"): the break keeps
    # them decoded once, and the ad request encodes them once, so the ad server
    # gets each value exactly as the manifest spelled it (a double-encoded
    # SERIES="Series%2520Name" stays double-encoded, never a third time).
    params = tuple((k, unquote(attrs.string(k) or "")) for k in attrs if k)
    return [Signal(SignalKind.POINT, EXT_X_ASSET, params=params)]


HANDLERS: dict[str, Handler] = {
    EXT_X_CUE_OUT: _cue_out,
    EXT_X_CUE_OUT_CONT: _cue_out_cont,
    EXT_X_CUE_IN: _cue_in,
    EXT_X_CUE: _adobe_cue,
    EXT_X_CUE_CONT: _adobe_cue_cont,
    EXT_X_CUE_SPAN: _cue_span,
    EXT_OATCLS_SCTE35: _oatcls,
    EXT_X_SPLICEPOINT_SCTE35: _splicepoint,
    EXT_X_SCTE35: _x_scte35,
    EXT_SCTE35: _ext_scte35,
    EXT_X_DATERANGE: _daterange,
    EXT_X_ASSET: _asset,
}


class _MemoKey:
    """A segment memo key per (consumer, policy): hashed by identity, since a
    policy's dataclass hash costs more than the lookup it keys."""

    __slots__ = ()


_MEMO_KEYS: dict[tuple[str, MarkerPolicy], _MemoKey] = {}


def _memo_key(consumer: str, policy: MarkerPolicy) -> _MemoKey:
    key = _MEMO_KEYS.get((consumer, policy))
    if key is None:
        if len(_MEMO_KEYS) >= 256:
            _MEMO_KEYS.clear()
        key = _MEMO_KEYS[(consumer, policy)] = _MemoKey()
    return key


def segment_signals(seg: Segment, policy: MarkerPolicy = MarkerPolicy(),
                    errors: MarkerErrors | None = None) -> list[Signal]:
    """All signals attached to one segment, in line order."""
    if not seg.markers:
        return []  # flagged at parse time: most segments carry no marker at all
    return _segment_signals(seg, policy, errors if errors is not None else MarkerErrors(),
                            _memo_key("signals", policy))


#: The two tag lines of every segment, which no handler reads.
_NOT_MARKERS = ("#EXTINF:", "#EXT-X-PROGRAM-DATE-TIME:")


def _segment_signals(seg: Segment, policy: MarkerPolicy, errors: MarkerErrors,
                     memo_key: _MemoKey) -> list[Signal]:
    memo = seg.memo
    cached = memo.get(memo_key)
    if cached is not None:
        return cached  # type: ignore[return-value]
    out: list[Signal] = []
    for text in seg.raw:  # the raw text: no Line objects for this
        if text.startswith("#EXT") and not text.startswith(_NOT_MARKERS):
            tag, colon, value = text.partition(":")
            handler = HANDLERS.get(tag)
            if handler is not None:
                out.extend(_line_signals(handler, tag, value if colon else None, seg, policy,
                                         errors, memo_key))
    memo[memo_key] = out
    return out


#: Handlers are pure functions of a tag's text, and live feeds repeat the same
#: marker lines (``#EXT-X-CUE-OUT-CONT:ElapsedTime=2,Duration=30`` every break):
#: each distinct line is interpreted once, its errors replayed on every sighting.
#: Keyed by the policy's memo key (hashed by identity, see :class:`_MemoKey`).
_LINE_CACHE: dict[tuple[str | None, str | None, _MemoKey],
                  tuple[tuple[Signal, ...], tuple[str, ...]]] = {}


def _line_signals(handler: Handler, tag: str | None, value: str | None, seg: Segment,
                  policy: MarkerPolicy, errors: MarkerErrors, policy_key: _MemoKey,
                  ) -> tuple[Signal, ...]:
    key = (tag, value, policy_key)
    hit = _LINE_CACHE.get(key)
    if hit is None:
        local = MarkerErrors()  # logs each message once, here
        hit = (tuple(handler(value, seg, policy, local)), tuple(local.items))
        if len(_LINE_CACHE) >= 8192:
            _LINE_CACHE.clear()
        _LINE_CACHE[key] = hit
    errors.items.extend(hit[1])  # counted at every sighting
    return hit[0]


def _from_cue(cue: str | None, dialect: str, policy: MarkerPolicy,
              errors: MarkerErrors) -> list[Signal]:
    """Signals from a binary SCTE-35 splice_info_section (SCTE 35 sections 9.7, 10)."""
    if not cue:
        return []
    from manifests import scte35  # local import keeps the dialect table readable

    try:
        section = scte35.decode(cue)
    except ManifestError as exc:
        errors.add(f"{dialect}: undecodable SCTE-35 cue ({exc})")
        return []
    command = section.splice_command
    pts = section.effective_pts_time
    if isinstance(command, scte35.SpliceInsert):
        event_id = str(command.splice_event_id)
        if command.splice_event_cancel_indicator:
            return [Signal(SignalKind.CANCEL, dialect, event_id=event_id, cue=cue)]
        if command.out_of_network_indicator:
            bd = command.break_duration
            duration = ticks_to_seconds(bd.duration) if bd is not None else None
            return [Signal(SignalKind.OUT, dialect, event_id=event_id,
                           planned_duration=duration, cue=cue, pts=pts)]
        return [Signal(SignalKind.IN, dialect, event_id=event_id, cue=cue, pts=pts)]
    if isinstance(command, scte35.TimeSignal):
        return _segmentation_signals(section, dialect, policy, cue, pts)
    return []


def _segmentation_signals(section: object, dialect: str, policy: MarkerPolicy,
                          cue: str, pts: int | None) -> list[Signal]:
    """Segmentation descriptors (SCTE 35 10.3.3, Table 22) as signals.

    Which types open a break is the channel's choice (``policy``); a nested type
    (provider ad inside a placement opportunity) opens one only when no opening
    type is in the same cue, and :func:`observe` / :func:`~manifests.breaks.update_breaks`
    treat it as an event inside an open break, never as a second break.
    """
    from manifests import scte35

    descriptors = [d for d in getattr(section, "descriptors", ())
                   if isinstance(d, scte35.SegmentationDescriptor)]
    types = {d.segmentation_type_id for d in descriptors}
    outer_present = bool(types & policy.opening_types)
    out: list[Signal] = []
    for d in descriptors:
        event_id = str(d.segmentation_event_id)
        if d.segmentation_event_cancel_indicator:
            out.append(Signal(SignalKind.CANCEL, dialect, event_id=event_id, cue=cue,
                              segmentation_type_id=d.segmentation_type_id))
            continue
        t = d.segmentation_type_id
        duration = (ticks_to_seconds(d.segmentation_duration)
                    if d.segmentation_duration is not None else None)
        upid = d.segmentation_upid.hex() if isinstance(d.segmentation_upid, bytes) else None
        opens = t in policy.opening_types or (t in policy.nested_types and not outer_present)
        closing = {END_OF[o] for o in policy.opening_types | policy.nested_types if o in END_OF}
        if opens:
            out.append(Signal(SignalKind.OUT, dialect, event_id=event_id,
                              planned_duration=duration, segmentation_type_id=t, upid=upid,
                              cue=cue, pts=pts))
        elif t in closing:
            out.append(Signal(SignalKind.IN, dialect, event_id=event_id,
                              segmentation_type_id=t, upid=upid, cue=cue, pts=pts))
    return out


def _with_id(signal: Signal, event_id: str | None, start: datetime | None = None) -> Signal:
    return replace(signal, event_id=signal.event_id or event_id or None,
                   start=signal.start if signal.start is not None else start)


def _unreadable(attrs: AttributeList, name: str) -> bool:
    """Is attribute ``name`` there with a value that is not a decimal number?"""
    return name in attrs and attrs.decimal(name) is None


def _attrs(text: str, errors: MarkerErrors) -> AttributeList | None:
    try:
        return AttributeList.parse(text)
    except ManifestError as exc:
        errors.add(f"malformed attribute list {text!r}: {exc}")
        return None


def _clock(text: str | None) -> Fraction | None:
    """``HH:MM:SS(.fff)``, plain seconds, or an ISO 8601 duration ``PT1M10.5S``."""
    if not text:
        return None
    text = text.strip()
    iso = _ISO_DURATION.match(text)
    if iso:
        h, m, sec = (Fraction(g) if g else Fraction(0) for g in iso.groups())
        return h * 3600 + m * 60 + sec
    parts = text.split(":")
    try:
        total = Fraction(0)
        for part in parts:
            total = total * 60 + Fraction(part)
        return total
    except (ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True, slots=True)
class Observation:
    """A break boundary seen in one playlist, at a segment boundary.

    ``at`` is the PDT of the segment where the break opens (OUT) or content
    resumes (IN). For a join mid-break (a CONT with no OUT before it in the
    window), ``at`` is the PDT of the first CONT segment and ``elapsed`` the
    time already spent in the break there. A DATERANGE whose time lies before
    the window's first segment is observed at that time itself (its boundary
    has left the window).

    ``nestable`` marks a segmentation type that may sit inside another break
    (provider/distributor ad start/end): inside an open break it is an event
    of that break, never a second break nor its end.
    """

    kind: SignalKind
    at: datetime
    msn: int
    dialect: str
    event_id: str | None = None
    planned_duration: Fraction | None = None
    elapsed: Fraction | None = None
    segmentation_type_id: int | None = None
    upid: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    pts: int | None = None
    nestable: bool = False
    #: For an IN: the start of the slot just before ``at`` (None at the window's
    #: start), so a late CUE-IN can be told from one at the planned end's boundary.
    previous: datetime | None = None
    #: For a DATERANGE OUT (or the CONT a closing tag implies): the signalled
    #: START-DATE itself, which ``at`` snaps to the next boundary. The planned end
    #: counts from it (gpac#3906: content resumes at the first boundary at or
    #: after start time + duration, not snapped start + duration).
    event_at: datetime | None = None
    #: For an IN: ``at`` is the range's own end (END-DATE, or START-DATE +
    #: DURATION), the break's actual length, which overrides the planned one. Such
    #: an end past the window is observed at that time itself, like a time before it.
    declared: bool = False
    #: For an OUT: announced ahead, its START-DATE past the window's last segment
    #: (RFC 8216bis 4.4.5.1 lets a DATERANGE precede its start): ``at`` is that
    #: time itself, not yet a boundary; a later reload places it.
    ahead: bool = False


#: PDT is written to the millisecond: times this close are the same instant.
PDT_SLACK = timedelta(milliseconds=20)


def observe(playlist: MediaPlaylist, policy: MarkerPolicy = MarkerPolicy(),
            errors: MarkerErrors | None = None, *, since_msn: int | None = None,
            ) -> list[Observation]:
    """Break openings/closings in one playlist, in timeline order.

    Segments need a PDT (explicit, or synthesised by
    :func:`manifests.timeline.with_pdt`): breaks are placed on the shared
    timeline, so every rendition and instance agrees.

    Several dialects announcing the same break on one segment (Elemental,
    Adobe, SCTE-35 tags stacked, hls.js#910) become one OUT observation whose
    fields are the first each dialect gave; EXT-X-ASSET parameters on that
    segment go with it. A CONT is only an observation when no break is open in
    this window (a join); a nested segmentation type inside an open break is
    not one at all.

    ``since_msn``: report only what segments after it say (a refresh's new
    tail: the rest was observed on an earlier reload and merged already). The
    walk state after each segment (open or not, DATERANGE starts by ID) is
    memoised on the segment, so a refresh resumes from the last one it already
    walked instead of re-reading the window. Only segments flagged at parse
    time as carrying markers are read.
    """
    errors = errors if errors is not None else MarkerErrors()
    nested_ends = {END_OF[t] for t in policy.nested_types if t in END_OF}
    nested = policy.nested_types | nested_ends
    segments = playlist.rows  # only the marked segments are built
    state = _WindowState(segments, errors)
    out: list[Observation] = []
    first = segments[0].msn if segments else playlist.media_sequence
    marked = playlist.marked
    begin = 0
    memo_key = _memo_key("walk", policy)
    signals_key = _memo_key("signals", policy)
    if since_msn is not None:
        resume = bisect_right(marked, since_msn)
        if resume > 0:
            walked = segments[marked[resume - 1] - first].memo.get(memo_key)
            if walked is not None:
                was_open, starts = cast(tuple[bool, tuple[tuple[str, datetime], ...]], walked)
                state.open = was_open
                state.starts = dict(starts)
                begin = resume
    OUT, CONT, IN, POINT = SignalKind.OUT, SignalKind.CONT, SignalKind.IN, SignalKind.POINT
    last: Segment | None = None
    last_at = -1  # index of the last segment walked
    inert: dict[str, bool] = {}
    for msn in marked[begin:]:
        at = msn - first
        if state.open:
            tag = segments.pending_tag(at)
            if tag is not None:
                # A column row of the parse (a PDT, so walked) whose one marker
                # line is a CONT inside the open break: reading it changes
                # nothing, so its segment is not built for it.
                calm = inert.get(tag)
                if calm is None:
                    calm = _inert_in_break(tag, nested, signals_key)
                    if calm:
                        inert[tag] = calm
                if calm:
                    last_at = at
                    continue
        seg = segments[at]
        if seg.pdt is None:
            continue
        last, last_at = seg, at
        quiet = since_msn is not None and msn <= since_msn
        signals = (_segment_signals(seg, policy, errors, signals_key) if seg.markers else [])
        if quiet and not any(sig.dialect == EXT_X_DATERANGE for sig in signals):
            # Observed on an earlier reload: only the open/closed state matters here.
            for sig in signals:
                kind = sig.kind
                if kind is POINT or (state.open and sig.segmentation_type_id in nested):
                    continue
                if kind is CONT or kind is OUT:
                    state.open = True
                elif kind is IN:
                    state.open = False
            continue
        here: list[Observation] = []
        for sig in signals:
            kind = sig.kind
            if kind is POINT:
                continue
            nestable = sig.segmentation_type_id in nested
            if nestable and state.open:
                continue  # an ad inside the open break: an event of it, not a boundary
            if sig.dialect == EXT_X_DATERANGE:
                here.extend(state.daterange(sig, seg, nestable))
                continue
            if kind is CONT:
                if state.open:
                    continue  # inside the break this window already opened
                state.open = True
            elif kind is OUT:
                state.open = True
            previous = None
            if kind is IN:
                state.open = False
                previous = state.previous(seg.msn)
            here.append(Observation(kind, seg.pdt, seg.msn, sig.dialect, sig.event_id,
                                    sig.planned_duration, sig.elapsed, sig.segmentation_type_id,
                                    sig.upid, (), sig.pts, nestable, previous))
        if not quiet and here:
            params = tuple(p for sig in signals if sig.kind is POINT for p in sig.params)
            out.extend(_coalesce(here, seg, params))
    if last_at >= 0:
        # The walk state after the last segment read: the next reload resumes there
        # (its ``since_msn`` is this window's end, so the walk stops at this segment).
        last = segments[last_at]
        last.memo[memo_key] = (state.open, tuple(state.starts.items()))
    out.sort(key=lambda o: o.at)  # stable: same-instant observations keep tag order
    return out


def _inert_in_break(text: str, nested: frozenset[int], policy_key: _MemoKey) -> bool:
    """Does a segment whose only marker line is ``text`` leave :func:`observe`'s
    walk unchanged while a break is open? True when the line has no handler, or
    its signals (already interpreted, without errors to count) are all points,
    nested types, or non-DATERANGE CONTs: exactly what the walk skips."""
    tag, colon, value = text.partition(":")
    if tag not in HANDLERS:
        return True
    hit = _LINE_CACHE.get((tag, value if colon else None, policy_key))
    if hit is None or hit[1]:
        return False  # not interpreted yet, or its errors count at every sighting
    return all(sig.kind is SignalKind.POINT or sig.segmentation_type_id in nested
               or (sig.kind is SignalKind.CONT and sig.dialect != EXT_X_DATERANGE)
               for sig in hit[0])


class _WindowState:
    """What :func:`observe` remembers while walking one window."""

    def __init__(self, segments: SegmentTable, errors: MarkerErrors) -> None:
        self._segments = segments
        self._timed: list[Segment] | None = None
        self.errors = errors
        self.open = False
        #: DATERANGE ID -> its first START-DATE in this window.
        self.starts: dict[str, datetime] = {}

    @property
    def timed(self) -> list[Segment]:
        """The window's segments that have a PDT (built only when a tag needs it)."""
        if self._timed is None:
            self._timed = [seg for seg in self._segments if seg.pdt is not None]
        return self._timed

    def previous(self, msn: int) -> datetime | None:
        """The start of the timed slot before MSN ``msn``, if it is in the window
        (read from the PDT column: the slot before a CUE-IN is not built for it)."""
        segments = self._segments
        i = msn - segments.msn(0) if segments else -1
        if not 0 < i < len(segments) or segments.pdt(i) is None:
            return None
        for j in range(i - 1, -1, -1):
            pdt = segments.pdt(j)
            if pdt is not None:
                return pdt
        return None

    def place(self, when: datetime) -> tuple[datetime, int] | None:
        """Where a DATERANGE time lands: the first boundary at or after it; the time
        itself when it lies before the window; None when it is past the window."""
        first = self.timed[0]
        assert first.pdt is not None
        if when + PDT_SLACK < first.pdt:
            return when, first.msn
        return _boundary_at_or_after(self.timed, when)

    def daterange(self, sig: Signal, seg: Segment, nestable: bool) -> list[Observation]:
        assert seg.pdt is not None
        key = sig.event_id or ""
        if sig.kind is SignalKind.OUT:
            begin = sig.start if sig.start is not None else seg.pdt
            self.starts.setdefault(key, begin)
            placed = self.place(begin)
            if placed is None:
                # Ahead of the live edge: known now (decisions are fetched before it
                # starts), placed on its boundary by the reload that lists it.
                last = self.timed[-1]
                ahead = Observation(SignalKind.OUT, begin, last.msn + 1, sig.dialect,
                                    sig.event_id, sig.planned_duration, None,
                                    sig.segmentation_type_id, sig.upid, (), sig.pts, nestable,
                                    event_at=begin, ahead=True)
                end = sig.end or (add_seconds(begin, sig.duration) if sig.duration is not None
                                  else None)
                return [ahead] + ([self.declared_end(sig, end, None)] if end is not None else [])
            self.open = True
            out = [Observation(SignalKind.OUT, placed[0], placed[1], sig.dialect, sig.event_id,
                               sig.planned_duration, None, sig.segmentation_type_id, sig.upid,
                               (), sig.pts, nestable, event_at=begin)]
            end = sig.end or (add_seconds(begin, sig.duration) if sig.duration is not None
                              else None)
            if end is not None:
                closed = self.place(end)
                out.append(self.declared_end(sig, end, closed))
            return out
        if sig.kind is SignalKind.IN:
            opened: datetime | None = self.starts.get(key)
            if opened is not None and sig.start is not None and abs(sig.start - opened) > PDT_SLACK:
                # RFC 8216bis 4.4.5.1: same-ID tags must agree; keep the first START-DATE.
                self.errors.add(f"EXT-X-DATERANGE ID={key!r}: START-DATE {sig.start.isoformat()}"
                                f" differs from {opened.isoformat()}; the first one is kept")
            start = opened if opened is not None else sig.start
            end = sig.end
            if end is None and start is not None and sig.duration is not None:
                end = add_seconds(start, sig.duration)
            if end is None and opened is None:
                end = sig.start  # an IN range of its own: content resumes at its start
            out = []
            if opened is None and end is not None and sig.duration is not None:
                # The opening tag has left the window (Elemental's closing tag has
                # END-DATE and DURATION only): the break is known from the close.
                begin = add_seconds(end, -sig.duration)
                joined = self.place(begin)
                if joined is not None:
                    out.append(Observation(SignalKind.CONT, joined[0], joined[1], sig.dialect,
                                           sig.event_id, sig.duration, event_at=begin))
            if end is None:
                self.open = False  # the tag's position is the splice point
                out.append(Observation(SignalKind.IN, seg.pdt, seg.msn, sig.dialect,
                                       sig.event_id, segmentation_type_id=sig.segmentation_type_id,
                                       pts=sig.pts, nestable=nestable,
                                       previous=self.previous(seg.msn)))
                return out
            closing = self.declared_end(sig, end, self.place(end))
            out.append(replace(closing, segmentation_type_id=sig.segmentation_type_id,
                               pts=sig.pts, nestable=nestable))
            return out
        if sig.kind is SignalKind.CANCEL:
            return [Observation(SignalKind.CANCEL, seg.pdt, seg.msn, sig.dialect, sig.event_id)]
        return []  # a DATERANGE CONT does not exist

    def declared_end(self, sig: Signal, end: datetime,
                     placed: tuple[datetime, int] | None) -> Observation:
        """The IN a range's own end implies: at its boundary in this window, else (past
        the window's last segment) at the end time itself, so it is known now: content
        resumes at the first boundary at or after it, whichever reload lists that."""
        if placed is None:
            last = self.timed[-1]
            return Observation(SignalKind.IN, end, last.msn + 1, sig.dialect, sig.event_id,
                               previous=last.pdt, declared=True)
        self.open = False
        return Observation(SignalKind.IN, placed[0], placed[1], sig.dialect, sig.event_id,
                           previous=self.previous(placed[1]), declared=True)


def _coalesce(observations: list[Observation], seg: Segment,
              params: tuple[tuple[str, str], ...]) -> list[Observation]:
    """One OUT per instant: stacked dialects on a segment announce one break."""
    out: list[Observation] = []
    for obs in observations:
        prev = out[-1] if out else None
        if (obs.kind is SignalKind.OUT and prev is not None and prev.kind is SignalKind.OUT
                and abs(prev.at - obs.at) <= PDT_SLACK):
            out[-1] = _fill(prev, obs)
        else:
            out.append(obs)
    if not params:
        return out
    return [replace(o, params=params) if o.kind is SignalKind.OUT and o.msn == seg.msn
            else o for o in out]


def _fill(first: Observation, other: Observation) -> Observation:
    """``first`` with the fields it lacks taken from ``other``."""
    return replace(
        first,
        event_id=first.event_id or other.event_id,
        planned_duration=(first.planned_duration if first.planned_duration is not None
                          else other.planned_duration),
        segmentation_type_id=(first.segmentation_type_id
                              if first.segmentation_type_id is not None
                              else other.segmentation_type_id),
        upid=first.upid or other.upid,
        pts=first.pts if first.pts is not None else other.pts,
        nestable=first.nestable and other.nestable,
    )


def _boundary_at_or_after(segments: Iterable[Segment], when: datetime) -> tuple[datetime, int] | None:
    """The first segment boundary at or after ``when`` (a DATERANGE start inside a
    segment does not replace that segment). Tolerates PDT's millisecond rounding."""
    for seg in segments:
        if seg.pdt is not None and seg.pdt + PDT_SLACK >= when:
            return seg.pdt, seg.msn
    return None
