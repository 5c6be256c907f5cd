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
