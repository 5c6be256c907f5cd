"""The pure manifest library: no IO, no clock, no network.

Parse and render HLS media playlists losslessly, find ad breaks in every
marker dialect, decode SCTE-35, plan pods, splice, keep the sequence ledger,
and check the invariants of ``DESIGN.md``. The service (``stitcher``), the
replay and the live checker all build on these names.
"""

from manifests.breaks import Break, BreakIndex, BreakPolicy, update_breaks
from manifests.checker import Checker, Rule, Snapshot, Violation, check
from manifests.errors import (
    AttributeListError,
    ManifestError,
    NoCommonSpan,
    PlaylistParseError,
    Scte35Error,
    SequenceRegressionError,
    SpliceError,
)
from manifests.layout import CommonGrid, GridTiming, PodWindow, common_grid, grid_timing, pod_window
from manifests.ledger import Ledger, SlotEntry, SlotKind
from manifests.markers import MarkerPolicy, Observation, Signal, SignalKind, observe
from manifests.mpegts import MpegTsError, video_start_pts
from manifests.multivariant import Multivariant, Rendition, parse_multivariant
from manifests.playlist import MediaPlaylist, Segment, parse_media, render
from manifests.pod import Candidate, Pod, PodItem, plan_pod
from manifests.refresh import IncrementalParser
from manifests.splice import SpliceCache, SpliceOptions, SpliceResult, breaks_to_decide, splice
from manifests.timeline import with_pdt
from manifests.webvtt import MapCheck, MapStatus, check_timestamp_map

__all__ = [
    "AttributeListError", "Break", "BreakIndex", "BreakPolicy", "Candidate", "Checker",
    "CommonGrid", "GridTiming",
    "IncrementalParser", "Ledger", "ManifestError", "MapCheck", "MapStatus", "MarkerPolicy", "MediaPlaylist",
    "MpegTsError",
    "Multivariant", "NoCommonSpan", "Observation", "PlaylistParseError", "Pod", "PodItem",
    "PodWindow", "Rendition", "Rule",
    "Scte35Error", "Segment", "SequenceRegressionError", "Signal", "SignalKind", "SlotEntry",
    "SlotKind", "Snapshot", "SpliceCache", "SpliceError", "SpliceOptions", "SpliceResult",
    "Violation", "breaks_to_decide", "check", "check_timestamp_map", "common_grid", "grid_timing",
    "observe", "parse_media", "parse_multivariant", "plan_pod", "pod_window",
    "render", "splice", "update_breaks", "video_start_pts", "with_pdt",
]
