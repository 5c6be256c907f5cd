"""manifests.scte35: corpus vectors, the threefive oracle, bug cases and properties.

threefive 3.1.5 is copyleft (Sleepycat): it is imported here, as a test oracle, and
nowhere in the product. Where it is known to be wrong, the deviation is listed in
KNOWN_THREEFIVE_DEVIATIONS and asserted to still exist.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import io
import json
import os
import re
from fnmatch import fnmatch
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import threefive
from hypothesis import event, given, settings
from hypothesis import strategies as st

from manifests import scte35
from manifests.errors import Scte35Error
from manifests.scte35 import (
    AvailDescriptor,
    BandwidthReservation,
    BreakDuration,
    DtmfDescriptor,
    PrivateCommand,
    SegmentationComponent,
    SegmentationDescriptor,
    SegmentationUpid,
    SpliceInfoSection,
    SpliceInsert,
    SpliceInsertComponent,
    SpliceNull,
    SpliceSchedule,
    SpliceTime,
    TimeDescriptor,
    TimeSignal,
    UnknownDescriptor,
)

CORPUS = Path(__file__).parents[2] / ".." / "shared" / "corpus"
SCTE35_DIR = CORPUS / "public" / "scte35"
BUGS_DIR = CORPUS / "bugs"

REASONS = frozenset({"format", "truncated", "table_id", "length", "crc", "encrypted",
                     "command_type"})

# Invalid corpus cues and the reason we reject them with (each checked by hand).
INVALID_REASONS = {
    # RFC 8216 §8.10 examples: one header byte short, so section_length overruns the data.
    "23_rfc8216_daterange_scte35_out_illustrative.txt": "truncated",
    "24_rfc8216_daterange_scte35_in_illustrative.txt": "truncated",
    # Odd number of hex digits (a documentation artifact).
    "40_elemental_live_daterange_in_malformed.txt": "format",
    # section_length 8 cannot even hold the fixed header fields.
    "43_grafov_ext_scte35_truncated.txt": "length",
}

# kind -> (fields of the comparison view that threefive 3.1.5 gets wrong, as fnmatch
# patterns; why). Descriptor fields are named "d<index>.<field>".
KNOWN_THREEFIVE_DEVIATIONS: dict[str, tuple[frozenset[str], str]] = {
    "legacy_command_length": (
        frozenset({"descriptor_count", "d*"}),
        ("splice_command_length 0xFFF means 'unknown length' (SCTE 35 §9.6.1): the command's "
        "own syntax ends it. threefive 3.1.5 slices 4095 bytes as the command instead, so "
        "the descriptor loop (and the CRC) are lost."),
    ),
    "component_splice_insert": (
        frozenset({"break_duration", "break_auto_return", "unique_program_id", "avail_num",
                   "avails_expected"}),
        ("component-mode splice_insert (program_splice_flag=0, Table 10): threefive 3.1.5 "
        "never reads component_count and the component loop, so break_duration and every "
        "later field are read from the wrong bits."),
    ),
    "component_segmentation_descriptor": (
        frozenset({"d*.segmentation_type_id", "d*.segmentation_duration", "d*.upid_type",
                   "d*.segment_num", "d*.segments_expected", "d*.sub_segment*"}),
        ("component-mode segmentation_descriptor (program_segmentation_flag=0, §10.3.3): "
        "threefive 3.1.5 never reads component_count and the component loop, so "
        "segmentation_duration, the UPID and segmentation_type_id are read from the wrong "
        "bits, or it raises (TypeError) reading past the descriptor."),
    ),
    "empty_upid": (
        frozenset({"d*.upid_type"}),
        ("segmentation_upid_length 0 with a non-zero segmentation_upid_type (AWS MediaConvert "
        "sends type 0x09 so, corpus 17/18; expected.json keeps 9): threefive 3.1.5 rewrites "
        "the type to 0."),
    ),
}
# corpus file -> deviation kinds it shows
CORPUS_THREEFIVE_DEVIATIONS = {
    "15_scte35js_time_signal_0x30_unpadded.txt": {"legacy_command_length"},
    "17_mediaconvert_time_signal_0x34_start.txt": {"empty_upid"},
    "18_mediaconvert_time_signal_0x35_end.txt": {"empty_upid"},
    "32_x9k3_splice_insert_immediate_early_return.txt": {"component_splice_insert"},
}


def _require(folder: Path) -> None:
    if not folder.is_dir():
        message = f"corpus folder {folder.resolve()} is absent"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: the corpus is required)")
        pytest.skip(message)


def _corpus_params(*, valid_only: bool = False) -> list[Any]:
    files = sorted(SCTE35_DIR.glob("*.txt")) if SCTE35_DIR.is_dir() else []
    if valid_only and files:
        files = [p for p in files if _expected()[p.name]["status"] == "valid"]
    return [pytest.param(p, id=p.name) for p in files] or [
        pytest.param(None, id="scte35-corpus-absent")
    ]


@functools.cache
def _expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCTE35_DIR / "expected.json").read_text())
    return data


def _cue_text(path: Path) -> str:
    comment, cue = path.read_text().splitlines()[:2]
    assert comment.startswith("#")
    return cue


def _s(ticks: int | None) -> float | None:
    return None if ticks is None else round(ticks / 90_000, 6)


# --- expected.json ---------------------------------------------------------------------


def _descriptor_view(d: scte35.SpliceDescriptor) -> dict[str, Any]:
    if isinstance(d, AvailDescriptor):
        return {"tag": 0, "provider_avail_id": d.provider_avail_id}
    assert isinstance(d, SegmentationDescriptor), d
    view = {
        "tag": 2, "segmentation_event_id": d.segmentation_event_id,
        "cancel": int(d.segmentation_event_cancel_indicator),
        "segmentation_type_id": hex(d.segmentation_type_id),
        "type_name": scte35.SEGMENTATION_TYPES.get(d.segmentation_type_id, "?"),
        "segmentation_duration": _s(d.segmentation_duration),
        "upid_type": d.segmentation_upid_type, "upid_hex": d.segmentation_upid.hex(),
        "segment_num": d.segment_num, "segments_expected": d.segments_expected,
        "delivery_not_restricted": int(d.delivery_not_restricted_flag),
    }
    if d.sub_segment_num is not None:
        view |= {"sub_segment_num": d.sub_segment_num,
                 "sub_segments_expected": d.sub_segments_expected}
    return view


def _expected_view(section: SpliceInfoSection) -> dict[str, Any]:
    """Our decode in the shape of expected.json's ``decoded`` objects."""
    cmd = section.splice_command
    view: dict[str, Any] = {
        "command_type": section.splice_command_type,
        "pts_adjustment": _s(section.pts_adjustment), "tier": section.tier,
        "splice_command_length": section.splice_command_length,
        "descriptors": [_descriptor_view(d) for d in section.descriptors],
        "crc32_ok": True,  # decode() verified CRC_32, or it would have raised
    }
    if isinstance(cmd, TimeSignal | SpliceInsert):
        view["pts_time"] = _s(section.pts_time)
    if isinstance(cmd, SpliceInsert):
        view |= {
            "splice_event_id": cmd.splice_event_id,
            "cancel": int(cmd.splice_event_cancel_indicator),
            "out_of_network": int(cmd.out_of_network_indicator),
            "program_splice": int(cmd.program_splice_flag),
            "duration_flag": int(cmd.duration_flag),
            "splice_immediate": int(cmd.splice_immediate_flag),
            "unique_program_id": cmd.unique_program_id, "avail_num": cmd.avail_num,
            "avails_expected": cmd.avails_expected,
            "break_duration": _s(cmd.break_duration.duration) if cmd.break_duration else None,
        }
        if cmd.break_duration is not None:
            view["auto_return"] = int(cmd.break_duration.auto_return)
    if isinstance(cmd, PrivateCommand):
        view["identifier"] = cmd.identifier
    return view


def _assert_matches_expected(path: Path) -> None:
    expected = _expected()[path.name]
    cue = _cue_text(path)
    assert expected["value"] == cue
    if expected["status"] == "invalid":
        with pytest.raises(Scte35Error) as caught:
            scte35.decode(cue)
        assert caught.value.reason == INVALID_REASONS[path.name]
        return
    assert expected["status"] == "valid"
    view = _expected_view(scte35.decode(cue))
    actual = {key: view.get(key, "<missing>") for key in expected["decoded"]}
    assert actual == expected["decoded"]


@pytest.mark.parametrize("path", _corpus_params())
def test_corpus_cue_matches_expected_json(path: Path | None) -> None:
    _require(SCTE35_DIR)
    assert path is not None
    _assert_matches_expected(path)


def test_corpus_expected_json_lists_every_file() -> None:
    _require(SCTE35_DIR)
    assert sorted(_expected()) == sorted(p.name for p in SCTE35_DIR.glob("*.txt"))
    invalid = {name for name, e in _expected().items() if e["status"] == "invalid"}
    assert invalid == set(INVALID_REASONS)


# --- the threefive oracle --------------------------------------------------------------


def _threefive(cue: str | bytes) -> Any:
    if isinstance(cue, bytes):
        # threefive.Cue(bytes) expects MPEG-TS data: it cuts at the first 00 00 01 FC,
        # which a section may contain. Base64 is read as the section itself.
        cue = base64.b64encode(cue).decode()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return threefive.Cue(cue)


def _threefive_view(cue: Any) -> dict[str, Any]:
    cmd = cue.command
    view: dict[str, Any] = {
        "command_type": cmd.command_type, "pts_adjustment": cue.info_section.pts_adjustment,
        "pts_time": getattr(cmd, "pts_time", None), "descriptor_count": len(cue.descriptors),
    }
    if cmd.command_type == scte35.SPLICE_INSERT:
        view |= {name: getattr(cmd, name) for name in (
            "splice_event_id", "splice_event_cancel_indicator", "out_of_network_indicator",
            "program_splice_flag", "duration_flag", "splice_immediate_flag",
            "break_duration", "break_auto_return", "unique_program_id", "avail_num",
            "avails_expected")}
    if cmd.command_type == scte35.PRIVATE_COMMAND:
        view["identifier"] = cmd.identifier
    for i, d in enumerate(cue.descriptors):
        fields: dict[str, Any] = {"tag": d.tag}
        if d.tag == scte35.SEGMENTATION_DESCRIPTOR:
            fields |= {
                "segmentation_event_id": int(d.segmentation_event_id, 16),
                "cancel": d.segmentation_event_cancel_indicator,
                "segmentation_type_id": d.segmentation_type_id,
                "segmentation_duration": d.segmentation_duration,
                "upid_type": d.segmentation_upid_type, "segment_num": d.segment_num,
                "segments_expected": d.segments_expected,
                "sub_segment_num": d.sub_segment_num,
                "sub_segments_expected": d.sub_segments_expected,
            }
        elif d.tag == scte35.AVAIL_DESCRIPTOR:
            fields["provider_avail_id"] = d.provider_avail_id
        view |= {f"d{i}.{k}": v for k, v in fields.items()}
    return view


def _our_view(section: SpliceInfoSection) -> dict[str, Any]:
    """Our decode in the shape of :func:`_threefive_view` (None where threefive has None)."""
    cmd = section.splice_command
    view: dict[str, Any] = {
        "command_type": section.splice_command_type,
        "pts_adjustment": _s(section.pts_adjustment), "pts_time": _s(section.pts_time),
        "descriptor_count": len(section.descriptors),
    }
    if isinstance(cmd, SpliceInsert):
        live = not cmd.splice_event_cancel_indicator
        bd = cmd.break_duration
        view |= {
            "splice_event_id": cmd.splice_event_id,
            "splice_event_cancel_indicator": cmd.splice_event_cancel_indicator,
            "break_duration": _s(bd.duration) if bd else None,
            "break_auto_return": bd.auto_return if bd else None,
        }
        view |= {name: getattr(cmd, name) if live else None for name in (
            "out_of_network_indicator", "program_splice_flag", "duration_flag",
            "splice_immediate_flag", "unique_program_id", "avail_num", "avails_expected")}
    if isinstance(cmd, PrivateCommand):
        view["identifier"] = cmd.identifier
    for i, d in enumerate(section.descriptors):
        fields: dict[str, Any] = {"tag": d.splice_descriptor_tag}
        if isinstance(d, SegmentationDescriptor):
            live = not d.segmentation_event_cancel_indicator
            fields |= {
                "segmentation_event_id": d.segmentation_event_id,
                "cancel": d.segmentation_event_cancel_indicator,
                "sub_segment_num": d.sub_segment_num,
                "sub_segments_expected": d.sub_segments_expected,
            }
            fields |= {k: v if live else None for k, v in {
                "segmentation_type_id": d.segmentation_type_id,
                "segmentation_duration": _s(d.segmentation_duration),
                "upid_type": d.segmentation_upid_type, "segment_num": d.segment_num,
                "segments_expected": d.segments_expected}.items()}
        elif isinstance(d, AvailDescriptor):
            fields["provider_avail_id"] = d.provider_avail_id
        view |= {f"d{i}.{k}": v for k, v in fields.items()}
    return view


def _deviation_kinds(section: SpliceInfoSection) -> set[str]:
    kinds = set()
    if section.splice_command_length == scte35.LEGACY_UNKNOWN_COMMAND_LENGTH:
        kinds.add("legacy_command_length")
    cmd = section.splice_command
    if isinstance(cmd, SpliceInsert) and not (
        cmd.program_splice_flag or cmd.splice_event_cancel_indicator
    ):
        kinds.add("component_splice_insert")
    live = [d for d in section.descriptors
            if isinstance(d, SegmentationDescriptor) and not d.segmentation_event_cancel_indicator]
    if any(not d.program_segmentation_flag for d in live):
        kinds.add("component_segmentation_descriptor")
    if any(d.segmentation_upid_type and not d.segmentation_upid for d in live):
        kinds.add("empty_upid")
    return kinds


def _compare_with_threefive(cue: str | bytes, section: SpliceInfoSection) -> set[str]:
    """Assert threefive agrees outside the known deviations; return the fields it got wrong."""
    ours = _our_view(section)
    patterns = set().union(*(KNOWN_THREEFIVE_DEVIATIONS[k][0]
                             for k in _deviation_kinds(section)))
    try:
        theirs = _threefive_view(_threefive(cue))
    except Exception:
        if "component_segmentation_descriptor" not in _deviation_kinds(section):
            raise
        return {"<threefive raised>"}
    keys = set(ours) | set(theirs)
    tolerated = {k for k in keys if any(fnmatch(k, p) for p in patterns)}
    assert {k: theirs.get(k) for k in keys - tolerated} == {
        k: ours.get(k) for k in keys - tolerated}
    return {k for k in tolerated if theirs.get(k) != ours.get(k)}


@pytest.mark.parametrize("path", _corpus_params(valid_only=True))
def test_corpus_cue_agrees_with_threefive(path: Path | None) -> None:
    """Valid cues only: threefive 3.1.5 crashes or warns on the invalid ones."""
    _require(SCTE35_DIR)
    assert path is not None
    cue = _cue_text(path)
    section = scte35.decode(cue)
    kinds = CORPUS_THREEFIVE_DEVIATIONS.get(path.name, set())
    assert _deviation_kinds(section) == kinds
    wrong = _compare_with_threefive(cue, section)
    if kinds:
        # Still wrong in threefive (so a fixed release is noticed), right in ours.
        assert wrong, f"threefive now decodes {path.name} right: drop the deviation"
        _assert_matches_expected(path)
    if not _expected()[path.name]["threefive_3.1.5_agrees"]:
        assert kinds, "expected.json records a threefive disagreement: name it"


def test_threefive_is_the_pinned_oracle() -> None:
    assert threefive.version == "3.1.5"


# --- bug corpus (bugs/INDEX.md) --------------------------------------------------------


def _bug_cues(name: str, pattern: str) -> list[str]:
    _require(BUGS_DIR)
    return re.findall(pattern, (BUGS_DIR / name).read_text(), flags=re.MULTILINE)


def test_b18_splice_insert_fields_stay_aligned_after_the_flags_byte() -> None:
    (cue,) = _bug_cues("B18.scte35", r"^(?!#)(\S+)$")
    s = scte35.decode(cue)
    assert (s.section_length, s.crc_32) == (47, 0x7DA7BD8B)
    assert s.splice_command == SpliceInsert(
        splice_event_id=12061, out_of_network_indicator=True, program_splice_flag=True,
        duration_flag=True, splice_immediate_flag=False,
        splice_time=SpliceTime(True, 0x1F0E1D2C3),
        break_duration=BreakDuration(auto_return=False, duration=5_400_000),
        unique_program_id=4660, avail_num=2, avails_expected=4)
    assert s.splice_command.splice_time is not None
    assert s.splice_command.splice_time.pts_time_seconds == Fraction(8336298691, 90_000)
    assert s.descriptors == (AvailDescriptor(provider_avail_id=777),)
    assert not _compare_with_threefive(cue, s)


def test_b08_repeated_out_is_one_event() -> None:
    cues = _bug_cues("B08.m3u8", r"(?:#EXT-OATCLS-SCTE35:|SCTE35=)(\S+)$")
    assert len(cues) == 5 and len(set(cues)) == 1  # the same OUT, repeated: one event
    cmd = scte35.decode(cues[0]).splice_command
    assert isinstance(cmd, SpliceInsert) and cmd.splice_time and cmd.break_duration
    assert (cmd.splice_event_id, cmd.splice_time.pts_time, cmd.break_duration.duration) == (
        4097, 900_000_000, 2_700_000)
    assert cmd.out_of_network_indicator


def test_b09_daterange_scte35_out_time_signal() -> None:
    (cue,) = _bug_cues("B09.m3u8", r"SCTE35-OUT=(0x[0-9A-Fa-f]+)")
    s = scte35.decode(cue)
    assert s.splice_command == TimeSignal(SpliceTime(True, 3_000_000_000))
    (d,) = s.descriptors
    assert isinstance(d, SegmentationDescriptor)
    assert d.segmentation_type_id == scte35.PROVIDER_PLACEMENT_OPPORTUNITY_START
    assert d.segmentation_duration == 1_800_000


def test_b12_break_payload() -> None:
    cues = _bug_cues("B12.m3u8", r"(?:#EXT-OATCLS-SCTE35:|SCTE35=)([^,\s]+)$")
    assert len(cues) == 2 and len(set(cues)) == 1
    cmd = scte35.decode(cues[0]).splice_command
    assert isinstance(cmd, SpliceInsert) and cmd.splice_time and cmd.break_duration
    assert (cmd.splice_event_id, cmd.splice_time.pts_time, cmd.break_duration.duration) == (
        2017, 1_234_567_890, 1_350_000)


def test_b16_padded_base64_payload() -> None:
    cues = _bug_cues("B16.m3u8", r"(?:#EXT-OATCLS-SCTE35:|SCTE35=)([^,\s]+)$")
    assert len(cues) == 2 and len(set(cues)) == 1 and len(cues[0]) == 84
    assert cues[0].endswith("==")
    s = scte35.decode(cues[0])
    assert len(scte35.encode(s)) == 61 and s.crc_32 == 0xD44E32DA
    assert s.pts_time == 2_000_000_000
    (d,) = s.descriptors
    assert isinstance(d, SegmentationDescriptor)
    assert (d.segmentation_event_id, d.segmentation_type_id, d.segmentation_duration) == (
        1234, 0x34, 2_700_000)
    assert (d.segmentation_upid_type, d.segmentation_upid) == (0x0F, b"urn:example:")
    assert (d.segment_num, d.segments_expected) == (1, 1)
    # base64 with the padding dropped (the B16 fault) still decodes to the same section.
    assert scte35.decode(cues[0].rstrip("=")) == s


# --- formats, errors, helpers -----------------------------------------------------------

_SECTION = SpliceInfoSection.build(
    TimeSignal(SpliceTime(True, 123_456_789)),
    (SegmentationDescriptor(7, segmentation_type_id=scte35.BREAK_START,
                            segmentation_duration_flag=True, segmentation_duration=2_700_000),),
)
_BYTES = scte35.encode(_SECTION)


@pytest.mark.parametrize("form", [
    base64.b64encode(_BYTES).decode(),
    base64.b64encode(_BYTES).decode().rstrip("="),
    "0x" + _BYTES.hex(), "0X" + _BYTES.hex().upper(), _BYTES.hex(), _BYTES.hex().upper(),
    "  \t" + _BYTES.hex() + "\n", _BYTES, bytearray(_BYTES),
])
def test_every_input_form_decodes_the_same(form: str | bytes) -> None:
    assert scte35.decode(form) == _SECTION


@pytest.mark.parametrize("garbage", [
    "", "   ", "0x", "0xZZ", "0x" + _BYTES.hex()[:-1], "not base64!", "/DAvA", "/DAé",
    "0x fc30", "-_-_",
])
def test_undecodable_text_is_a_format_error(garbage: str) -> None:
    with pytest.raises(Scte35Error) as caught:
        scte35.decode(garbage)
    assert caught.value.reason == "format"


def _refit_crc(data: bytes) -> bytes:
    return data[:-4] + scte35.crc32_mpeg2(data[:-4]).to_bytes(4, "big")


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "truncated"),
    (b"\xfc\x30", "truncated"),
    (b"\xfd" + _BYTES[1:], "table_id"),
    (_BYTES[:-1], "truncated"),
    (_BYTES[:-1] + bytes([_BYTES[-1] ^ 1]), "crc"),
    (_BYTES + b"\x00", "length"),
    (_refit_crc(_BYTES[:4] + bytes([_BYTES[4] | 0x80]) + _BYTES[5:]), "encrypted"),
    (_refit_crc(_BYTES[:13] + b"\x01" + _BYTES[14:]), "command_type"),
    # descriptor_loop_length one byte longer than the loop
    (_refit_crc(_BYTES[:19] + bytes([_BYTES[19] + 1]) + _BYTES[20:]), "length"),
])
def test_broken_sections_raise_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(Scte35Error) as caught:
        scte35.decode(data)
    assert caught.value.reason == reason


def test_mpeg2_stuffing_after_the_section_is_accepted() -> None:
    assert scte35.decode(_BYTES + b"\xff\xff") == _SECTION


def test_crc32_mpeg2_check_value() -> None:
    assert scte35.crc32_mpeg2(b"123456789") == 0x0376E6E7  # CRC catalogue check value


def test_effective_pts_wraps_modulo_2_pow_33() -> None:
    s = SpliceInfoSection.build(TimeSignal(SpliceTime(True, 2**33 - 90_000)),
                                pts_adjustment=180_000)
    assert s.pts_time == 2**33 - 90_000
    assert s.effective_pts_time == 90_000
    assert s.effective_pts_time_seconds == 1
    assert s.adjusted(5) == 180_005


def test_segmentation_types_table_and_break_constants() -> None:
    names = scte35.SEGMENTATION_TYPES
    assert names[scte35.BREAK_START] == "Break Start" and names[scte35.BREAK_END] == "Break End"
    assert names[scte35.PROVIDER_ADVERTISEMENT_START] == "Provider Advertisement Start"
    assert names[scte35.DISTRIBUTOR_ADVERTISEMENT_END] == "Distributor Advertisement End"
    assert names[scte35.PROVIDER_PLACEMENT_OPPORTUNITY_END] == (
        "Provider Placement Opportunity End")
    assert names[scte35.DISTRIBUTOR_PLACEMENT_OPPORTUNITY_START] == (
        "Distributor Placement Opportunity Start")
    assert SegmentationDescriptor(1, segmentation_type_id=0x0C).segmentation_type_name is None


def test_mid_upid_is_a_list_of_upids() -> None:
    mid = bytes([0x09, 3]) + b"ADI" + bytes([0x0F, 4]) + b"urn:"
    s = SpliceInfoSection.build(TimeSignal(SpliceTime(True, 0)), (
        SegmentationDescriptor(1, segmentation_upid_type=0x0D, segmentation_upid=mid),))
    (d,) = s.descriptors
    assert isinstance(d, SegmentationDescriptor)
    assert d.mid == (SegmentationUpid(0x09, b"ADI"), SegmentationUpid(0x0F, b"urn:"))
    broken = scte35.encode(s).replace(bytes([0x0F, 4]), bytes([0x0F, 9]))
    with pytest.raises(Scte35Error) as caught:
        scte35.decode(_refit_crc(broken))
    assert caught.value.reason == "length"


def test_private_descriptors_are_kept_not_rejected() -> None:
    private = UnknownDescriptor(scte35.SEGMENTATION_DESCRIPTOR, b"ABCD\x01\x02")
    other_tag = UnknownDescriptor(0x80, b"CUEI\x09")
    s = SpliceInfoSection.build(SpliceNull(), (private, other_tag))
    assert s.descriptors == (private, other_tag)
    assert private.identifier == int.from_bytes(b"ABCD", "big")


def test_component_mode_splice_insert_break_duration() -> None:
    cmd = SpliceInsert(
        0x1234, out_of_network_indicator=True, program_splice_flag=False, duration_flag=True,
        components=(SpliceInsertComponent(0x21, SpliceTime(True, 900_000)),
                    SpliceInsertComponent(0x22, SpliceTime(False))),
        break_duration=BreakDuration(True, 2_700_000), unique_program_id=7, avail_num=1,
        avails_expected=2)
    s = SpliceInfoSection.build(cmd)
    assert s.splice_command == cmd
    wrong = _compare_with_threefive(scte35.encode(s), s)
    assert "break_duration" in wrong  # threefive 3.1.5: component_splice_insert deviation


@pytest.mark.parametrize("command", [SpliceNull(), TimeSignal(SpliceTime(True, 42)),
                                     SpliceInsert(9, True), BandwidthReservation()])
def test_legacy_unknown_command_length_is_resolved_by_parsing(command: Any) -> None:
    s = SpliceInfoSection.build(command, (AvailDescriptor(5),))
    legacy = _with_legacy_length(scte35.encode(s))
    decoded = scte35.decode(legacy)
    assert decoded == dataclasses.replace(s, splice_command_length=0xFFF,
                                          crc_32=decoded.crc_32)


def test_legacy_unknown_length_private_command_cannot_be_delimited() -> None:
    s = SpliceInfoSection.build(PrivateCommand(1, b"xyz"))
    with pytest.raises(Scte35Error) as caught:
        scte35.decode(_with_legacy_length(scte35.encode(s)))
    assert caught.value.reason == "length"


@pytest.mark.parametrize("section", [
    dataclasses.replace(_SECTION, splice_command=TimeSignal(SpliceTime(True, 2**33))),
    dataclasses.replace(_SECTION, splice_command=TimeSignal(SpliceTime(False, 5))),
    dataclasses.replace(_SECTION, splice_command=SpliceInsert(1, duration_flag=True)),
    dataclasses.replace(_SECTION, splice_command=SpliceInsert(1, True, avail_num=3)),
    dataclasses.replace(_SECTION, splice_command=SpliceInsert(
        1, splice_immediate_flag=True, splice_time=SpliceTime(True, 0))),
    dataclasses.replace(_SECTION, descriptors=(SegmentationDescriptor(
        1, delivery_not_restricted_flag=False),)),
    dataclasses.replace(_SECTION, descriptors=(SegmentationDescriptor(
        1, segmentation_type_id=0x10, sub_segment_num=1, sub_segments_expected=1),)),
    dataclasses.replace(_SECTION, descriptors=(SegmentationDescriptor(
        1, segmentation_duration=2**40),)),
    dataclasses.replace(_SECTION, descriptors=(DtmfDescriptor(1, "12345678"),)),
    dataclasses.replace(_SECTION, encrypted_packet=True),
    dataclasses.replace(_SECTION, pts_adjustment=-1),
])
def test_values_that_do_not_fit_are_unencodable(section: SpliceInfoSection) -> None:
    with pytest.raises(Scte35Error) as caught:
        scte35.encode(section)
    assert caught.value.reason == "unencodable"


def test_encode_base64_is_padded_base64_of_encode() -> None:
    text = scte35.encode_base64(_SECTION)
    assert text.startswith("/") and base64.b64decode(text) == _BYTES


# --- properties ------------------------------------------------------------------------

u8, u16, u32 = st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF_FFFF)
# 33-bit ticks, biased towards the 2**33 wrap and zero.
ticks33 = st.one_of(st.integers(0, 2**33 - 1), st.integers(2**33 - 900_000, 2**33 - 1),
                    st.just(0))
ticks40 = st.one_of(st.integers(0, 2**40 - 1), st.integers(2**40 - 900_000, 2**40 - 1))
splice_times = st.one_of(ticks33.map(lambda t: SpliceTime(True, t)), st.just(SpliceTime(False)))
break_durations = st.builds(BreakDuration, st.booleans(), ticks33)
ascii_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                     max_size=24).map(str.encode)
simple_upids = st.one_of(
    st.tuples(st.just(0x08), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(0x09), ascii_text),
    st.tuples(st.just(0x0C), st.binary(min_size=4, max_size=16)),
    st.tuples(st.just(0x0F), ascii_text),
)
upids = st.one_of(
    st.just((0, b"")), simple_upids, st.tuples(st.sampled_from([0x08, 0x09, 0x0F]), st.just(b"")),
    st.lists(simple_upids, min_size=1, max_size=3).map(
        lambda entries: (0x0D, b"".join(bytes([t, len(u)]) + u for t, u in entries))),
)


@st.composite
def splice_inserts(draw: st.DrawFn) -> SpliceInsert:
    event_id = draw(u32)
    if draw(st.integers(0, 9)) == 0:
        return SpliceInsert(event_id, True)
    program, immediate = draw(st.booleans()), draw(st.booleans())
    duration = draw(st.none() | break_durations)
    components = () if program else tuple(draw(st.lists(st.builds(
        SpliceInsertComponent, u8, st.none() if immediate else splice_times), max_size=4)))
    return SpliceInsert(
        event_id, False, draw(st.booleans()), program, duration is not None, immediate,
        draw(st.booleans()), draw(splice_times) if program and not immediate else None,
        components, duration, draw(u16), draw(u8), draw(u8))


@st.composite
def segmentation_descriptors(draw: st.DrawFn) -> SegmentationDescriptor:
    event_id, compliance = draw(u32), draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        return SegmentationDescriptor(event_id, True, compliance)
    program, not_restricted = draw(st.booleans()), draw(st.booleans())
    web, blackout, archive, device = (None, None, None, None) if not_restricted else (
        draw(st.booleans()), draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 3)))
    duration = draw(st.none() | ticks40)
    upid_type, upid = draw(upids)
    type_id = draw(st.sampled_from(sorted(scte35.SEGMENTATION_TYPES)) | u8)
    sub = draw(st.none() | st.tuples(u8, u8)) if type_id in scte35.SUB_SEGMENT_TYPES else None
    return SegmentationDescriptor(
        event_id, False, compliance, program, duration is not None, not_restricted, web,
        blackout, archive, device,
        () if program else tuple(draw(st.lists(
            st.builds(SegmentationComponent, u8, ticks33), max_size=3))),
        duration, upid_type, upid, type_id, draw(u8), draw(u8),
        sub[0] if sub else None, sub[1] if sub else None)


ad_commands = st.one_of(splice_inserts(), st.builds(TimeSignal, splice_times))
ad_descriptors = st.one_of(segmentation_descriptors(), st.builds(AvailDescriptor, u32))
other_commands = st.one_of(
    st.just(SpliceNull()), st.just(BandwidthReservation()),
    st.builds(PrivateCommand, u32, st.binary(max_size=32)),
    st.builds(SpliceSchedule, u8, st.binary(max_size=32)),
)
other_descriptors = st.one_of(
    st.builds(DtmfDescriptor, u8, st.text("0123456789*#", max_size=7)),
    st.builds(TimeDescriptor, st.integers(0, 2**48 - 1), u32, u16),
    st.builds(UnknownDescriptor, st.integers(4, 0xFF), st.binary(max_size=32)),
)


@st.composite
def sections(draw: st.DrawFn, commands: Any = ad_commands, descriptors: Any = ad_descriptors,
             ) -> tuple[SpliceInfoSection, Any, tuple[Any, ...]]:
    command = draw(commands)
    loop = tuple(draw(st.lists(descriptors, max_size=4)))
    section = SpliceInfoSection.build(command, loop, pts_adjustment=draw(ticks33),
                                      tier=draw(st.integers(0, 0xFFF)), cw_index=draw(u8),
                                      sap_type=draw(st.integers(0, 3)))
    return section, command, loop


def _with_legacy_length(data: bytes) -> bytes:
    patched = bytearray(data)
    patched[11] |= 0x0F  # splice_command_length is the low 12 bits of bytes 10..12
    patched[12] = 0xFF
    return _refit_crc(bytes(patched))


@given(sections())
def test_roundtrip_and_threefive_agree_on_ad_cues(case: Any) -> None:
    section, command, loop = case
    event(f"command={type(command).__name__}")
    for kind in sorted(_deviation_kinds(section)):
        event(f"threefive deviation={kind}")
    assert (section.splice_command, section.descriptors) == (command, loop)
    data = scte35.encode(section)
    assert scte35.decode(data) == section
    assert scte35.decode(base64.b64encode(data).decode().rstrip("=")) == section
    assert scte35.decode("0x" + data.hex()) == section
    _compare_with_threefive(data, section)


@given(sections(commands=ad_commands | other_commands,
                descriptors=ad_descriptors | other_descriptors))
def test_roundtrip_every_command_and_descriptor(case: Any) -> None:
    section, command, loop = case
    event(f"command={type(command).__name__}")
    assert (section.splice_command, section.descriptors) == (command, loop)
    assert scte35.decode(scte35.encode(section)) == section


@given(sections(commands=ad_commands | st.just(SpliceNull())))
def test_legacy_command_length_decodes_like_the_real_length(case: Any) -> None:
    section = case[0]
    decoded = scte35.decode(_with_legacy_length(scte35.encode(section)))
    assert decoded.splice_command_length == 0xFFF
    assert (decoded.splice_command, decoded.descriptors) == (
        section.splice_command, section.descriptors)
    if section.descriptors:  # threefive 3.1.5: legacy_command_length deviation
        event("legacy length with descriptors")
        assert _threefive_view(_threefive(_with_legacy_length(scte35.encode(section))))[
            "descriptor_count"] == 0


def _decode_outcome(data: str | bytes) -> str:
    """'ok' or the error reason; any exception but Scte35Error fails the test."""
    try:
        scte35.decode(data)
    except Scte35Error as exc:
        assert exc.reason in REASONS
        return exc.reason
    return "ok"


@given(st.binary(max_size=300))
def test_fuzz_random_bytes_raise_only_scte35error(data: bytes) -> None:
    event(_decode_outcome(data))


@given(st.text(max_size=200))
def test_fuzz_random_text_raises_only_scte35error(text: str) -> None:
    event(_decode_outcome(text))


@given(st.binary(min_size=14, max_size=300))
def test_fuzz_random_bodies_in_a_valid_frame(body: bytes) -> None:
    """A right table_id, section_length and CRC_32 around random bytes: the parser proper."""
    head = b"\xfc" + (0x3000 | (len(body) + 4)).to_bytes(2, "big")
    event(_decode_outcome(_refit_crc(head + body + b"\0\0\0\0")))


@settings(max_examples=50)
@given(sections(), st.data())
def test_fuzz_truncations_are_truncated(case: Any, data: st.DataObject) -> None:
    encoded = scte35.encode(case[0])
    cut = data.draw(st.integers(0, len(encoded) - 1))
    assert _decode_outcome(encoded[:cut]) == "truncated"


@given(sections(commands=ad_commands | other_commands,
                descriptors=ad_descriptors | other_descriptors), st.data())
def test_fuzz_bit_flips(case: Any, data: st.DataObject) -> None:
    encoded = bytearray(scte35.encode(case[0]))
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 0x80 >> (bit % 8)
    assert _decode_outcome(bytes(encoded)) != "ok"  # CRC-32 catches every single-bit error
    if bit // 8 < len(encoded) - 4:
        event("refit CRC: " + _decode_outcome(_refit_crc(bytes(encoded))))
