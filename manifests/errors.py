"""One exception hierarchy for the pure manifest library.

Everything the library raises derives from :class:`ManifestError`, so the service
maps errors to HTTP responses and metrics in one place (``stitcher/errors.py``).
Parsing a live playlist is lenient: it never raises for tags it does not know;
it raises only when the input cannot be a playlist at all.
"""

from __future__ import annotations


class ManifestError(Exception):
    """Base class of every error raised by ``manifests``."""


class PlaylistParseError(ManifestError):
    """The text is not an HLS playlist (no ``#EXTM3U``, a URI with no EXTINF, ...)."""


class AttributeListError(ManifestError):
    """An attribute list (RFC 8216bis 4.2) that cannot be parsed."""


class Scte35Error(ManifestError):
    """A splice_info_section that cannot be decoded (truncated, bad CRC, garbage).

    ``reason`` is a short, stable, machine-readable slug for metrics labels.
    """

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class SpliceError(ManifestError):
    """The splice cannot be planned from its inputs (a programming or config error)."""


class SequenceRegressionError(SpliceError):
    """The origin's window ends below what the ledger already published.

    Its last media sequence number is below the ledger's high-water mark, so
    the window is either older than what players were already given or
    renumbered (Eyevinn/channel-engine#79, corpus B02: MSN 196 after 200, the
    same segment moved from 201 to 196). Serving it would decrease
    EXT-X-MEDIA-SEQUENCE or give a published MSN another segment (invariant 1),
    and the ledger keeps no content URIs, so the splice cannot tell which of the
    two it is nor renumber the window back: it refuses, and the service serves
    its last good playlist (a cold start: 503 with Retry-After).
    """

    def __init__(self, last: int, hwm: int) -> None:
        super().__init__(f"the window ends at media sequence {last}, below the {hwm} "
                         "already published")
        self.last = last
        self.hwm = hwm


class NoCommonSpan(SpliceError):
    """A break holds no span between boundaries shared by every grid, so it cannot
    be replaced the same way in every rendition (``manifests.layout``, B05): the
    service leaves it to the content underneath."""
