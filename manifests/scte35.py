"""SCTE-35 ``splice_info_section`` decoder and encoder (SCTE 35 2023r1 / 2019r1, §9 and §10).

Pure Python, no IO. Names follow the spec's syntax tables: every dataclass is one table,
every attribute one field. Times stay in 90 kHz ticks (``int``); the ``*_seconds``
properties give exact :class:`~fractions.Fraction` views.

Input format rule (:func:`decode`), unambiguous for every valid cue:

* ``bytes`` (or ``bytearray``/``memoryview``) are the binary section, never text;
* a ``str`` is stripped of surrounding whitespace, then

  1. ``0x``/``0X`` prefix: hexadecimal (even digit count, nothing else);
  2. only hexadecimal digits: bare hexadecimal;
  3. anything else: base64 (RFC 4648 alphabet), with or without ``=`` padding.

  A section starts with table_id 0xFC, whose base64 form starts with ``/``, which is not a
  hex digit; so no valid cue's base64 text can be taken for hex, and hex text that happened
  to be base64 could not decode to a section anyway.

Every failure raises :class:`~manifests.errors.Scte35Error` with one of these ``reason``
slugs (never another exception type, whatever the input):

``format``        the text is neither hex nor base64, or is empty
``truncated``     fewer bytes than the header or ``section_length`` announce
``table_id``      table_id is not 0xFC
``length``        a length field (section, command, descriptor loop, descriptor, UPID)
                  disagrees with the bytes it claims, or non-stuffing bytes follow the section
``crc``           CRC_32 does not match (CRC-32/MPEG-2, poly 0x04C11DB7)
``encrypted``     encrypted_packet is set (§11): no keys here, the command is unreadable
``command_type``  a reserved splice_command_type (Table 7)
``unencodable``   :func:`encode` got a value that does not fit its field, or
                  inconsistent flags
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import ClassVar, Final, TypeAlias

from manifests.errors import Scte35Error

TICKS_PER_SECOND: Final = 90_000
PTS_MODULUS: Final = 1 << 33  # PTS and pts_adjustment are 33-bit counters (ISO 13818-1)
TABLE_ID: Final = 0xFC
CUEI: Final = 0x43554549  # "CUEI": the identifier of every SCTE 35 splice_descriptor (§10.2)
LEGACY_UNKNOWN_COMMAND_LENGTH: Final = 0xFFF  # §9.6.1: splice_command_length 0xFFF = unknown
MAX_SECTION_LENGTH: Final = 4093  # §9.6.1: section_length shall not exceed 4093
# protocol_version .. splice_command_type (11) + descriptor_loop_length (2) + CRC_32 (4)
_MIN_SECTION_LENGTH: Final = 17

# splice_command_type, Table 7
SPLICE_NULL: Final = 0x00
SPLICE_SCHEDULE: Final = 0x04
SPLICE_INSERT: Final = 0x05
TIME_SIGNAL: Final = 0x06
BANDWIDTH_RESERVATION: Final = 0x07
PRIVATE_COMMAND: Final = 0xFF

# splice_descriptor_tag, Table 16
AVAIL_DESCRIPTOR: Final = 0x00
DTMF_DESCRIPTOR: Final = 0x01
SEGMENTATION_DESCRIPTOR: Final = 0x02
TIME_DESCRIPTOR: Final = 0x03

# segmentation_type_id, Table 22 (the pairs a stitcher's break logic keys on)
PROGRAM_START: Final = 0x10
PROGRAM_END: Final = 0x11
BREAK_START: Final = 0x22
BREAK_END: Final = 0x23
PROVIDER_ADVERTISEMENT_START: Final = 0x30
PROVIDER_ADVERTISEMENT_END: Final = 0x31
DISTRIBUTOR_ADVERTISEMENT_START: Final = 0x32
DISTRIBUTOR_ADVERTISEMENT_END: Final = 0x33
PROVIDER_PLACEMENT_OPPORTUNITY_START: Final = 0x34
PROVIDER_PLACEMENT_OPPORTUNITY_END: Final = 0x35
DISTRIBUTOR_PLACEMENT_OPPORTUNITY_START: Final = 0x36
DISTRIBUTOR_PLACEMENT_OPPORTUNITY_END: Final = 0x37
PROVIDER_AD_BLOCK_START: Final = 0x44
PROVIDER_AD_BLOCK_END: Final = 0x45
DISTRIBUTOR_AD_BLOCK_START: Final = 0x46
DISTRIBUTOR_AD_BLOCK_END: Final = 0x47

SEGMENTATION_TYPES: Final[Mapping[int, str]] = MappingProxyType({
    0x00: "Not Indicated", 0x01: "Content Identification", 0x02: "Private",
    0x10: "Program Start", 0x11: "Program End", 0x12: "Program Early Termination",
    0x13: "Program Breakaway", 0x14: "Program Resumption", 0x15: "Program Runover Planned",
    0x16: "Program Runover Unplanned", 0x17: "Program Overlap Start",
    0x18: "Program Blackout Override", 0x19: "Program Join",
    0x20: "Chapter Start", 0x21: "Chapter End", 0x22: "Break Start", 0x23: "Break End",
    0x24: "Opening Credit Start", 0x25: "Opening Credit End",
    0x26: "Closing Credit Start", 0x27: "Closing Credit End",
    0x30: "Provider Advertisement Start", 0x31: "Provider Advertisement End",
    0x32: "Distributor Advertisement Start", 0x33: "Distributor Advertisement End",
    0x34: "Provider Placement Opportunity Start", 0x35: "Provider Placement Opportunity End",
    0x36: "Distributor Placement Opportunity Start",
    0x37: "Distributor Placement Opportunity End",
    0x38: "Provider Overlay Placement Opportunity Start",
    0x39: "Provider Overlay Placement Opportunity End",
    0x3A: "Distributor Overlay Placement Opportunity Start",
    0x3B: "Distributor Overlay Placement Opportunity End",
    0x3C: "Provider Promo Start", 0x3D: "Provider Promo End",
    0x3E: "Distributor Promo Start", 0x3F: "Distributor Promo End",
    0x40: "Unscheduled Event Start", 0x41: "Unscheduled Event End",
    0x42: "Alternate Content Opportunity Start", 0x43: "Alternate Content Opportunity End",
    0x44: "Provider Ad Block Start", 0x45: "Provider Ad Block End",
    0x46: "Distributor Ad Block Start", 0x47: "Distributor Ad Block End",
    0x50: "Network Start", 0x51: "Network End",
})
# §10.3.3.1: sub_segment_num/sub_segments_expected follow for these types (2019 had
# 0x34/0x36/0x38/0x3A only). Older encoders omit them, so they are read only when the
# descriptor still has the bytes.
SUB_SEGMENT_TYPES: Final = frozenset({0x30, 0x32, 0x34, 0x36, 0x38, 0x3A, 0x44, 0x46})
UPID_TYPE_MID: Final = 0x0D  # Table 21: MID(), a list of UPIDs


def _seconds(ticks: int | None) -> Fraction | None:
    return None if ticks is None else Fraction(ticks, TICKS_PER_SECOND)


def _unencodable(message: str) -> Scte35Error:
    return Scte35Error(message, reason="unencodable")


class _Reader:
    """Big-endian bit reader over ``data[start:end]``; reading past the end is a length error."""

    __slots__ = ("_bit", "_data", "_end")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self._data = data
        self._bit = start * 8
        self._end = (len(data) if end is None else end) * 8

    @property
    def remaining(self) -> int:
        """Whole bytes left."""
        return (self._end - self._bit) // 8

    def uint(self, width: int) -> int:
        stop = self._bit + width
        if stop > self._end:
            raise Scte35Error(
                f"field of {width} bits at byte {self._bit // 8} runs past its length",
                reason="length",
            )
        first, last = self._bit // 8, (stop + 7) // 8
        value = int.from_bytes(self._data[first:last], "big") >> (last * 8 - stop)
        self._bit = stop
        return value & ((1 << width) - 1)

    def flag(self) -> bool:
        return self.uint(1) == 1

    def take(self, count: int) -> bytes:
        """The next ``count`` whole bytes (every caller is byte aligned)."""
        start, stop = self._bit // 8, self._bit + count * 8
        if stop > self._end:
            raise Scte35Error(f"{count} bytes at byte {start} run past their length",
                              reason="length")
        self._bit = stop
        return self._data[start:start + count]

    def sub(self, count: int) -> _Reader:
        """A reader over the next ``count`` bytes, which this reader skips."""
        start = self._bit // 8
        self.take(count)
        return _Reader(self._data, start, start + count)


class _Writer:
    """Big-endian bit writer; a value that does not fit its field is unencodable."""

    __slots__ = ("_bits", "_value")

    def __init__(self) -> None:
        self._value = 0
        self._bits = 0

    def uint(self, value: int, width: int, name: str) -> None:
        if not 0 <= value < 1 << width:
            raise _unencodable(f"{name}={value} does not fit in {width} bits")
        self._value = (self._value << width) | value
        self._bits += width

    def flag(self, value: bool) -> None:
        self.uint(int(value), 1, "flag")

    def reserved(self, width: int) -> None:
        self.uint((1 << width) - 1, width, "reserved")  # reserved bits are written as '1'

    def raw(self, data: bytes) -> None:
        self.uint(int.from_bytes(data, "big"), len(data) * 8, "bytes")

    def to_bytes(self) -> bytes:
        return self._value.to_bytes(self._bits // 8, "big")


# --- §9.8 time fields ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpliceTime:
    """splice_time() (§9.8.1, Table 14); ``pts_time`` in 33-bit ticks, None if unspecified."""

    time_specified_flag: bool
    pts_time: int | None = None

    @property
    def pts_time_seconds(self) -> Fraction | None:
        return _seconds(self.pts_time)

    @classmethod
    def _decode(cls, r: _Reader) -> SpliceTime:
        if r.flag():
            r.uint(6)
            return cls(True, r.uint(33))
        r.uint(7)
        return cls(False)

    def _encode(self, w: _Writer) -> None:
        if self.time_specified_flag != (self.pts_time is not None):
            raise _unencodable("pts_time must be set exactly when time_specified_flag is")
        w.flag(self.time_specified_flag)
        if self.pts_time is None:
            w.reserved(7)
        else:
            w.reserved(6)
            w.uint(self.pts_time, 33, "pts_time")


@dataclass(frozen=True, slots=True)
class BreakDuration:
    """break_duration() (§9.8.2, Table 15); ``duration`` in 33-bit ticks."""

    auto_return: bool
    duration: int

    @property
    def duration_seconds(self) -> Fraction:
        return Fraction(self.duration, TICKS_PER_SECOND)

    @classmethod
    def _decode(cls, r: _Reader) -> BreakDuration:
        auto_return = r.flag()
        r.uint(6)
        return cls(auto_return, r.uint(33))

    def _encode(self, w: _Writer) -> None:
        w.flag(self.auto_return)
        w.reserved(6)
        w.uint(self.duration, 33, "duration")


# --- §9.7 splice commands ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpliceNull:
    """splice_null() (§9.7.1, Table 8): a heartbeat, no fields."""

    splice_command_type: ClassVar[int] = SPLICE_NULL

    @classmethod
    def _decode(cls, r: _Reader) -> SpliceNull:
        return cls()

    def _encode(self, w: _Writer) -> None:
        """Nothing to write."""


@dataclass(frozen=True, slots=True)
class SpliceSchedule:
    """splice_schedule() (§9.7.2, Table 9), kept minimal: splice_count and the raw events.

    Schedules serve analog cue-tone replacement and do not reach an HLS stitcher. Their
    end cannot be found without a splice_command_length (see :func:`decode`).
    """

    splice_count: int
    events: bytes = b""
    splice_command_type: ClassVar[int] = SPLICE_SCHEDULE

    @classmethod
    def _decode(cls, r: _Reader) -> SpliceSchedule:
        return cls(r.uint(8), r.take(r.remaining))

    def _encode(self, w: _Writer) -> None:
        w.uint(self.splice_count, 8, "splice_count")
        w.raw(self.events)


@dataclass(frozen=True, slots=True)
class SpliceInsertComponent:
    """One component of a component-mode splice_insert() (Table 10).

    ``splice_time`` is None when the insert has splice_immediate_flag set.
    """

    component_tag: int
    splice_time: SpliceTime | None = None


@dataclass(frozen=True, slots=True)
class SpliceInsert:
    """splice_insert() (§9.7.3, Table 10).

    ``splice_time`` is set only in program mode (program_splice_flag=1) without
    splice_immediate_flag; component mode lists ``components`` instead.
    """

    splice_event_id: int
    splice_event_cancel_indicator: bool = False
    out_of_network_indicator: bool = False
    program_splice_flag: bool = True
    duration_flag: bool = False
    splice_immediate_flag: bool = False
    event_id_compliance_flag: bool = True  # 2022+: was a reserved '1' before
    splice_time: SpliceTime | None = None
    components: tuple[SpliceInsertComponent, ...] = ()
    break_duration: BreakDuration | None = None
    unique_program_id: int = 0
    avail_num: int = 0
    avails_expected: int = 0
    splice_command_type: ClassVar[int] = SPLICE_INSERT

    @classmethod
    def _decode(cls, r: _Reader) -> SpliceInsert:
        event_id, cancel = r.uint(32), r.flag()
        r.uint(7)
        if cancel:
            return cls(event_id, True)
        out_of_network, program, duration_flag = r.flag(), r.flag(), r.flag()
        immediate, compliance = r.flag(), r.flag()
        r.uint(3)
        splice_time, components = None, []
        if program and not immediate:
            splice_time = SpliceTime._decode(r)
        if not program:
            for _ in range(r.uint(8)):
                tag = r.uint(8)
                components.append(
                    SpliceInsertComponent(tag, None if immediate else SpliceTime._decode(r))
                )
        duration = BreakDuration._decode(r) if duration_flag else None
        return cls(event_id, False, out_of_network, program, duration_flag, immediate,
                   compliance, splice_time, tuple(components), duration,
                   r.uint(16), r.uint(8), r.uint(8))

    def _encode(self, w: _Writer) -> None:
        w.uint(self.splice_event_id, 32, "splice_event_id")
        w.flag(self.splice_event_cancel_indicator)
        w.reserved(7)
        if self.splice_event_cancel_indicator:
            if self != SpliceInsert(self.splice_event_id, True):
                raise _unencodable("a cancelled splice_insert carries no other fields")
            return
        timed = self.program_splice_flag and not self.splice_immediate_flag
        if timed != (self.splice_time is not None):
            raise _unencodable("splice_time is set exactly in timed program mode")
        if self.program_splice_flag and self.components:
            raise _unencodable("components are for component mode (program_splice_flag=0)")
        if any((c.splice_time is None) != self.splice_immediate_flag for c in self.components):
            raise _unencodable("component splice_time is set exactly when not immediate")
        if self.duration_flag != (self.break_duration is not None):
            raise _unencodable("duration_flag disagrees with break_duration")
        for value in (self.out_of_network_indicator, self.program_splice_flag,
                      self.duration_flag, self.splice_immediate_flag,
                      self.event_id_compliance_flag):
            w.flag(value)
        w.reserved(3)
        if self.splice_time is not None:
            self.splice_time._encode(w)
        if not self.program_splice_flag:
            w.uint(len(self.components), 8, "component_count")
            for c in self.components:
                w.uint(c.component_tag, 8, "component_tag")
                if c.splice_time is not None:
                    c.splice_time._encode(w)
        if self.break_duration is not None:
            self.break_duration._encode(w)
        w.uint(self.unique_program_id, 16, "unique_program_id")
        w.uint(self.avail_num, 8, "avail_num")
        w.uint(self.avails_expected, 8, "avails_expected")


@dataclass(frozen=True, slots=True)
class TimeSignal:
    """time_signal() (§9.7.4, Table 11): a splice_time for the descriptors to refer to."""

    splice_time: SpliceTime
    splice_command_type: ClassVar[int] = TIME_SIGNAL

    @classmethod
    def _decode(cls, r: _Reader) -> TimeSignal:
        return cls(SpliceTime._decode(r))

    def _encode(self, w: _Writer) -> None:
        self.splice_time._encode(w)


@dataclass(frozen=True, slots=True)
class BandwidthReservation:
    """bandwidth_reservation() (§9.7.5, Table 12): no fields."""

    splice_command_type: ClassVar[int] = BANDWIDTH_RESERVATION

    @classmethod
    def _decode(cls, r: _Reader) -> BandwidthReservation:
        return cls()

    def _encode(self, w: _Writer) -> None:
        """Nothing to write."""


@dataclass(frozen=True, slots=True)
class PrivateCommand:
    """private_command() (§9.7.6, Table 13): a 32-bit identifier and opaque bytes."""

    identifier: int
    private_bytes: bytes = b""
    splice_command_type: ClassVar[int] = PRIVATE_COMMAND

    @classmethod
    def _decode(cls, r: _Reader) -> PrivateCommand:
        return cls(r.uint(32), r.take(r.remaining))

    def _encode(self, w: _Writer) -> None:
        w.uint(self.identifier, 32, "identifier")
        w.raw(self.private_bytes)


SpliceCommand: TypeAlias = (
    SpliceNull | SpliceSchedule | SpliceInsert | TimeSignal | BandwidthReservation
    | PrivateCommand
)
_COMMANDS: Final[Mapping[int, Callable[[_Reader], SpliceCommand]]] = MappingProxyType({
    SPLICE_NULL: SpliceNull._decode,
    SPLICE_SCHEDULE: SpliceSchedule._decode,
    SPLICE_INSERT: SpliceInsert._decode,
    TIME_SIGNAL: TimeSignal._decode,
    BANDWIDTH_RESERVATION: BandwidthReservation._decode,
    PRIVATE_COMMAND: PrivateCommand._decode,
})


# --- §10 splice descriptors ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AvailDescriptor:
    """avail_descriptor() (§10.3.1, Table 17)."""

    provider_avail_id: int
    splice_descriptor_tag: ClassVar[int] = AVAIL_DESCRIPTOR

    @classmethod
    def _decode(cls, r: _Reader) -> AvailDescriptor:
        return cls(r.uint(32))

    def _encode(self, w: _Writer) -> None:
        w.uint(self.provider_avail_id, 32, "provider_avail_id")


@dataclass(frozen=True, slots=True)
class DtmfDescriptor:
    """DTMF_descriptor() (§10.3.2, Table 18); ``dtmf_chars`` holds at most 7 characters."""

    preroll: int
    dtmf_chars: str = ""
    splice_descriptor_tag: ClassVar[int] = DTMF_DESCRIPTOR

    @classmethod
    def _decode(cls, r: _Reader) -> DtmfDescriptor:
        preroll, count = r.uint(8), r.uint(3)
        r.uint(5)
        return cls(preroll, r.take(count).decode("latin-1"))

    def _encode(self, w: _Writer) -> None:
        w.uint(self.preroll, 8, "preroll")
        w.uint(len(self.dtmf_chars), 3, "dtmf_count")
        w.reserved(5)
        try:
            w.raw(self.dtmf_chars.encode("latin-1"))
        except UnicodeEncodeError as exc:
            raise _unencodable("DTMF_char must be single bytes") from exc


@dataclass(frozen=True, slots=True)
class SegmentationUpid:
    """One UPID inside a MID() segmentation_upid (§10.3.3.3, Table 21, type 0x0D)."""

    segmentation_upid_type: int
    segmentation_upid: bytes


def parse_mid(data: bytes) -> tuple[SegmentationUpid, ...]:
    """Split a MID() UPID (type 0x0D) into its (type, length, bytes) entries."""
    r, upids = _Reader(data), []
    while r.remaining:
        upid_type = r.uint(8)
        upids.append(SegmentationUpid(upid_type, r.take(r.uint(8))))
    return tuple(upids)


@dataclass(frozen=True, slots=True)
class SegmentationComponent:
    """One component of a component-mode segmentation_descriptor() (Table 19)."""

    component_tag: int
    pts_offset: int


@dataclass(frozen=True, slots=True)
class SegmentationDescriptor:
    """segmentation_descriptor() (§10.3.3, Table 19); duration in 40-bit ticks.

    The four delivery restriction fields are None when delivery_not_restricted_flag is set;
    sub_segment_num/sub_segments_expected are None when the descriptor does not carry them.
    """

    segmentation_event_id: int
    segmentation_event_cancel_indicator: bool = False
    segmentation_event_id_compliance_indicator: bool = True  # 2022+: was reserved '1'
    program_segmentation_flag: bool = True
    segmentation_duration_flag: bool = False
    delivery_not_restricted_flag: bool = True
    web_delivery_allowed_flag: bool | None = None
    no_regional_blackout_flag: bool | None = None
    archive_allowed_flag: bool | None = None
    device_restrictions: int | None = None
    components: tuple[SegmentationComponent, ...] = ()
    segmentation_duration: int | None = None
    segmentation_upid_type: int = 0
    segmentation_upid: bytes = b""
    segmentation_type_id: int = 0
    segment_num: int = 0
    segments_expected: int = 0
    sub_segment_num: int | None = None
    sub_segments_expected: int | None = None
    splice_descriptor_tag: ClassVar[int] = SEGMENTATION_DESCRIPTOR

    @property
    def segmentation_duration_seconds(self) -> Fraction | None:
        return _seconds(self.segmentation_duration)

    @property
    def segmentation_type_name(self) -> str | None:
        """The Table 22 name, None for an undefined segmentation_type_id."""
        return SEGMENTATION_TYPES.get(self.segmentation_type_id)

    @property
    def mid(self) -> tuple[SegmentationUpid, ...] | None:
        """The UPIDs of a MID() (type 0x0D), None for every other UPID type."""
        if self.segmentation_upid_type != UPID_TYPE_MID:
            return None
        return parse_mid(self.segmentation_upid)

    @classmethod
    def _decode(cls, r: _Reader) -> SegmentationDescriptor:
        event_id, cancel, compliance = r.uint(32), r.flag(), r.flag()
        r.uint(6)
        if cancel:
            return cls(event_id, True, compliance)
        program, duration_flag, not_restricted = r.flag(), r.flag(), r.flag()
        restrictions: tuple[bool | None, bool | None, bool | None, int | None]
        if not_restricted:
            r.uint(5)
            restrictions = (None, None, None, None)
        else:
            restrictions = (r.flag(), r.flag(), r.flag(), r.uint(2))
        components = []
        if not program:
            for _ in range(r.uint(8)):
                tag = r.uint(8)
                r.uint(7)
                components.append(SegmentationComponent(tag, r.uint(33)))
        duration = r.uint(40) if duration_flag else None
        upid_type = r.uint(8)
        upid = r.take(r.uint(8))
        if upid_type == UPID_TYPE_MID:
            parse_mid(upid)  # a MID whose entries overrun it is a length error, here
        type_id, num, expected = r.uint(8), r.uint(8), r.uint(8)
        sub: tuple[int | None, int | None] = (None, None)
        if type_id in SUB_SEGMENT_TYPES and r.remaining >= 2:
            sub = (r.uint(8), r.uint(8))
        web, blackout, archive, device = restrictions
        return cls(
            event_id, False, compliance, program, duration_flag, not_restricted,
            web_delivery_allowed_flag=web, no_regional_blackout_flag=blackout,
            archive_allowed_flag=archive, device_restrictions=device,
            components=tuple(components), segmentation_duration=duration,
            segmentation_upid_type=upid_type, segmentation_upid=upid,
            segmentation_type_id=type_id, segment_num=num, segments_expected=expected,
            sub_segment_num=sub[0], sub_segments_expected=sub[1],
        )

    def _encode(self, w: _Writer) -> None:
        w.uint(self.segmentation_event_id, 32, "segmentation_event_id")
        w.flag(self.segmentation_event_cancel_indicator)
        w.flag(self.segmentation_event_id_compliance_indicator)
        w.reserved(6)
        if self.segmentation_event_cancel_indicator:
            if self != SegmentationDescriptor(self.segmentation_event_id, True,
                                              self.segmentation_event_id_compliance_indicator):
                raise _unencodable("a cancelled segmentation event carries no other fields")
            return
        self._check()
        w.flag(self.program_segmentation_flag)
        w.flag(self.segmentation_duration_flag)
        w.flag(self.delivery_not_restricted_flag)
        if self.device_restrictions is None:
            w.reserved(5)
        else:
            w.flag(bool(self.web_delivery_allowed_flag))
            w.flag(bool(self.no_regional_blackout_flag))
            w.flag(bool(self.archive_allowed_flag))
            w.uint(self.device_restrictions, 2, "device_restrictions")
        if not self.program_segmentation_flag:
            w.uint(len(self.components), 8, "component_count")
            for c in self.components:
                w.uint(c.component_tag, 8, "component_tag")
                w.reserved(7)
                w.uint(c.pts_offset, 33, "pts_offset")
        if self.segmentation_duration is not None:
            w.uint(self.segmentation_duration, 40, "segmentation_duration")
        w.uint(self.segmentation_upid_type, 8, "segmentation_upid_type")
        w.uint(len(self.segmentation_upid), 8, "segmentation_upid_length")
        w.raw(self.segmentation_upid)
        w.uint(self.segmentation_type_id, 8, "segmentation_type_id")
        w.uint(self.segment_num, 8, "segment_num")
        w.uint(self.segments_expected, 8, "segments_expected")
        if self.sub_segment_num is not None and self.sub_segments_expected is not None:
            w.uint(self.sub_segment_num, 8, "sub_segment_num")
            w.uint(self.sub_segments_expected, 8, "sub_segments_expected")

    def _check(self) -> None:
        restrictions = (self.web_delivery_allowed_flag, self.no_regional_blackout_flag,
                        self.archive_allowed_flag, self.device_restrictions)
        if any((v is None) != self.delivery_not_restricted_flag for v in restrictions):
            raise _unencodable("delivery restrictions are set exactly when restricted")
        if self.program_segmentation_flag and self.components:
            raise _unencodable("components are for program_segmentation_flag=0")
        if self.segmentation_duration_flag != (self.segmentation_duration is not None):
            raise _unencodable("segmentation_duration_flag disagrees with the duration")
        if (self.sub_segment_num is None) != (self.sub_segments_expected is None) or (
            self.sub_segment_num is not None
            and self.segmentation_type_id not in SUB_SEGMENT_TYPES
        ):
            raise _unencodable("sub_segment fields come in pairs, for SUB_SEGMENT_TYPES only")
        if self.segmentation_upid_type == UPID_TYPE_MID:
            parse_mid(self.segmentation_upid)


@dataclass(frozen=True, slots=True)
class TimeDescriptor:
    """time_descriptor() (§10.3.4): TAI time of the splice and the UTC offset."""

    tai_seconds: int
    tai_ns: int
    utc_offset: int
    splice_descriptor_tag: ClassVar[int] = TIME_DESCRIPTOR

    @classmethod
    def _decode(cls, r: _Reader) -> TimeDescriptor:
        return cls(r.uint(48), r.uint(32), r.uint(16))

    def _encode(self, w: _Writer) -> None:
        w.uint(self.tai_seconds, 48, "TAI_seconds")
        w.uint(self.tai_ns, 32, "TAI_ns")
        w.uint(self.utc_offset, 16, "UTC_offset")


@dataclass(frozen=True, slots=True)
class UnknownDescriptor:
    """Any other splice_descriptor() (§10.2, Table 16), kept byte for byte.

    ``payload`` is everything after descriptor_length (identifier included): descriptors
    with other tags, and private ones whose identifier is not "CUEI".
    """

    splice_descriptor_tag: int
    payload: bytes

    @property
    def identifier(self) -> int | None:
        return int.from_bytes(self.payload[:4], "big") if len(self.payload) >= 4 else None

    def _encode(self, w: _Writer) -> None:
        w.raw(self.payload)


SpliceDescriptor: TypeAlias = (
    AvailDescriptor | DtmfDescriptor | SegmentationDescriptor | TimeDescriptor
    | UnknownDescriptor
)
_DESCRIPTORS: Final[Mapping[int, Callable[[_Reader], SpliceDescriptor]]] = MappingProxyType({
    AVAIL_DESCRIPTOR: AvailDescriptor._decode,
    DTMF_DESCRIPTOR: DtmfDescriptor._decode,
    SEGMENTATION_DESCRIPTOR: SegmentationDescriptor._decode,
    TIME_DESCRIPTOR: TimeDescriptor._decode,
})


def _decode_descriptor(r: _Reader) -> SpliceDescriptor:
    tag = r.uint(8)
    body = r.sub(r.uint(8))
    payload = body.take(body.remaining)
    decoder = _DESCRIPTORS.get(tag)
    if decoder is None or len(payload) < 4 or int.from_bytes(payload[:4], "big") != CUEI:
        return UnknownDescriptor(tag, payload)
    # Bytes after the known fields are a later revision's extension: ignored (§10.2).
    return decoder(_Reader(payload, 4))


def _encode_descriptor(descriptor: SpliceDescriptor) -> bytes:
    w = _Writer()
    if not isinstance(descriptor, UnknownDescriptor):
        w.uint(CUEI, 32, "identifier")
    descriptor._encode(w)
    body = w.to_bytes()
    head = _Writer()
    head.uint(descriptor.splice_descriptor_tag, 8, "splice_descriptor_tag")
    head.uint(len(body), 8, "descriptor_length")
    return head.to_bytes() + body


# --- §9.6 splice_info_section --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpliceInfoSection:
    """splice_info_section() (§9.6, Table 5); ``pts_adjustment`` in 33-bit ticks.

    Decoded lengths and CRC_32 are as on the wire. :func:`encode` recomputes
    section_length, splice_command_length, splice_command_type, descriptor_loop_length
    and CRC_32; :meth:`build` makes a section whose stored values already agree.
    """

    table_id: int
    section_syntax_indicator: bool
    private_indicator: bool
    sap_type: int
    section_length: int
    protocol_version: int
    encrypted_packet: bool
    encryption_algorithm: int
    pts_adjustment: int
    cw_index: int
    tier: int
    splice_command_length: int
    splice_command_type: int
    splice_command: SpliceCommand
    descriptor_loop_length: int
    descriptors: tuple[SpliceDescriptor, ...]
    crc_32: int

    @classmethod
    def build(
        cls,
        splice_command: SpliceCommand,
        descriptors: tuple[SpliceDescriptor, ...] = (),
        *,
        pts_adjustment: int = 0,
        tier: int = 0xFFF,
        cw_index: int = 0xFF,
        sap_type: int = 3,
        protocol_version: int = 0,
    ) -> SpliceInfoSection:
        """A section with computed lengths and CRC_32, equal to ``decode(encode(it))``."""
        draft = cls(TABLE_ID, False, False, sap_type, 0, protocol_version, False, 0,
                    pts_adjustment, cw_index, tier, 0, splice_command.splice_command_type,
                    splice_command, 0, tuple(descriptors), 0)
        return decode(encode(draft))

    @property
    def pts_adjustment_seconds(self) -> Fraction:
        return Fraction(self.pts_adjustment, TICKS_PER_SECOND)

    def adjusted(self, pts: int) -> int:
        """``pts`` with pts_adjustment applied, modulo 2**33 (§9.6.1)."""
        return (pts + self.pts_adjustment) % PTS_MODULUS

    @property
    def pts_time(self) -> int | None:
        """The program splice time as signalled (time_signal, or timed program-mode
        splice_insert), before pts_adjustment; None otherwise."""
        command = self.splice_command
        if isinstance(command, TimeSignal | SpliceInsert) and command.splice_time is not None:
            return command.splice_time.pts_time
        return None

    @property
    def effective_pts_time(self) -> int | None:
        """:attr:`pts_time` + pts_adjustment mod 2**33: the splice point on the PTS clock."""
        return None if self.pts_time is None else self.adjusted(self.pts_time)

    @property
    def effective_pts_time_seconds(self) -> Fraction | None:
        return _seconds(self.effective_pts_time)


# --- bytes ---------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc32_mpeg2(data: bytes) -> int:
    """CRC-32/MPEG-2 (ISO 13818-1 Annex A: poly 0x04C11DB7, init all ones, no reflection)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc


_HEX_DIGITS: Final = re.compile(r"[0-9A-Fa-f]+")


def _from_hex(text: str) -> bytes:
    if len(text) % 2 or not _HEX_DIGITS.fullmatch(text):
        raise Scte35Error("hex cue with an odd count of digits or a non-hex one",
                          reason="format")
    return bytes.fromhex(text)


def _cue_bytes(cue: str | bytes) -> bytes:
    """The section bytes of ``cue``, by the format rule in the module docstring."""
    if isinstance(cue, bytes | bytearray | memoryview):
        return bytes(cue)
    if not isinstance(cue, str):
        raise Scte35Error(f"a cue is str or bytes, not {type(cue).__name__}", reason="format")
    text = cue.strip()
    if text[:2] in ("0x", "0X"):
        return _from_hex(text[2:])
    if _HEX_DIGITS.fullmatch(text):
        return _from_hex(text)
    if not text or len(text.rstrip("=")) % 4 == 1:
        raise Scte35Error("cue is neither hex nor base64", reason="format")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise Scte35Error(f"cue is neither hex nor base64: {exc}", reason="format") from exc


def decode(cue: str | bytes) -> SpliceInfoSection:
    """Decode one splice_info_section from base64, ``0x`` hex, bare hex or raw bytes.

    Checks table_id, section_length and CRC_32 before reading any field; a legacy
    splice_command_length of 0xFFF is resolved by parsing the command (§9.6.1).
    """
    data = _cue_bytes(cue)
    if len(data) < 3:
        raise Scte35Error(f"{len(data)} bytes: shorter than a section header", reason="truncated")
    head = _Reader(data, 0, 3)
    table_id = head.uint(8)
    if table_id != TABLE_ID:
        raise Scte35Error(f"table_id 0x{table_id:02X} is not 0xFC", reason="table_id")
    section_syntax_indicator, private_indicator = head.flag(), head.flag()
    sap_type, section_length = head.uint(2), head.uint(12)
    end = 3 + section_length
    if section_length < _MIN_SECTION_LENGTH:
        raise Scte35Error(f"section_length {section_length} < {_MIN_SECTION_LENGTH}",
                          reason="length")
    if len(data) < end:
        raise Scte35Error(f"section_length {section_length} needs {end} bytes, got "
                          f"{len(data)}", reason="truncated")
    if any(byte != 0xFF for byte in data[end:]):  # only MPEG-2 stuffing may follow
        raise Scte35Error(f"{len(data) - end} bytes follow the section", reason="length")
    crc_32 = int.from_bytes(data[end - 4:end], "big")
    if crc32_mpeg2(data[:end - 4]) != crc_32:
        raise Scte35Error(f"CRC_32 0x{crc_32:08X} does not match the section", reason="crc")
    r = _Reader(data, 3, end - 4)
    protocol_version, encrypted_packet = r.uint(8), r.flag()
    encryption_algorithm, pts_adjustment, cw_index = r.uint(6), r.uint(33), r.uint(8)
    tier, splice_command_length, splice_command_type = r.uint(12), r.uint(12), r.uint(8)
    if encrypted_packet:
        raise Scte35Error("encrypted_packet is set", reason="encrypted")
    command_decoder = _COMMANDS.get(splice_command_type)
    if command_decoder is None:
        raise Scte35Error(f"reserved splice_command_type 0x{splice_command_type:02X}",
                          reason="command_type")
    if splice_command_length == LEGACY_UNKNOWN_COMMAND_LENGTH:
        if splice_command_type in (PRIVATE_COMMAND, SPLICE_SCHEDULE):  # kept as bytes
            raise Scte35Error("command of unknown length", reason="length")
        splice_command = command_decoder(r)  # the command's own syntax finds its end
    else:
        # Bytes the command's syntax does not use are ignored, like a descriptor's.
        splice_command = command_decoder(r.sub(splice_command_length))
    descriptor_loop_length = r.uint(16)
    loop = r.sub(descriptor_loop_length)
    descriptors = []
    while loop.remaining:
        descriptors.append(_decode_descriptor(loop))
    return SpliceInfoSection(
        table_id, section_syntax_indicator, private_indicator, sap_type, section_length,
        protocol_version, encrypted_packet, encryption_algorithm, pts_adjustment, cw_index,
        tier, splice_command_length, splice_command_type, splice_command,
        descriptor_loop_length, tuple(descriptors), crc_32,
    )


def encode(section: SpliceInfoSection) -> bytes:
    """The bytes of ``section`` with its lengths, command type and CRC_32 recomputed.

    Raises Scte35Error(reason="unencodable") for values that do not fit or disagree with
    their flags, for encrypted_packet, and for sections over 4093 bytes of section_length.
    """
    if section.table_id != TABLE_ID or section.encrypted_packet:
        raise _unencodable("only unencrypted sections with table_id 0xFC are encodable")
    w = _Writer()
    section.splice_command._encode(w)
    command = w.to_bytes()
    loop = b"".join(_encode_descriptor(d) for d in section.descriptors)
    section_length = _MIN_SECTION_LENGTH + len(command) + len(loop)
    if len(command) >= LEGACY_UNKNOWN_COMMAND_LENGTH or section_length > MAX_SECTION_LENGTH:
        raise _unencodable(f"section_length {section_length} or splice_command_length "
                           f"{len(command)} too long")
    h = _Writer()
    h.uint(TABLE_ID, 8, "table_id")
    h.flag(section.section_syntax_indicator)
    h.flag(section.private_indicator)
    h.uint(section.sap_type, 2, "sap_type")
    h.uint(section_length, 12, "section_length")
    h.uint(section.protocol_version, 8, "protocol_version")
    h.flag(False)
    h.uint(section.encryption_algorithm, 6, "encryption_algorithm")
    h.uint(section.pts_adjustment, 33, "pts_adjustment")
    h.uint(section.cw_index, 8, "cw_index")
    h.uint(section.tier, 12, "tier")
    h.uint(len(command), 12, "splice_command_length")
    h.uint(section.splice_command.splice_command_type, 8, "splice_command_type")
    h.raw(command)
    h.uint(len(loop), 16, "descriptor_loop_length")
    h.raw(loop)
    body = h.to_bytes()
    return body + crc32_mpeg2(body).to_bytes(4, "big")


def encode_base64(section: SpliceInfoSection) -> str:
    """:func:`encode` as padded base64, the form HLS tags carry."""
    return base64.b64encode(encode(section)).decode("ascii")
