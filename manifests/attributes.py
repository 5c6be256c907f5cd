"""Attribute lists, RFC 8216bis section 4.2.

``AttributeName=AttributeValue`` pairs separated by commas, where a value is a
decimal-integer, hexadecimal-sequence, decimal-floating-point, quoted-string,
enumerated-string or decimal-resolution. Values are kept as their raw text so
that re-rendering an untouched list is byte-identical; typed accessors convert
on demand.

Parsing is lenient where real feeds are sloppy (a space after a comma, as in
AWS Elemental's documentation samples) but never guesses: an unterminated
quoted string is an :class:`AttributeListError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from fractions import Fraction

from manifests.errors import AttributeListError


class AttributeList(Mapping[str, str]):
    """An ordered, read-only mapping from attribute name to raw value text.

    Quoted-string values keep their quotes in the raw text; use :meth:`string`
    for the unquoted content.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._index = {name: value for name, value in items}

    @classmethod
    def parse(cls, text: str) -> AttributeList:
        """Parse ``text`` (the part of a tag line after the colon)."""
        items: list[tuple[str, str]] = []
        i, n = 0, len(text)
        while i < n:
            while i < n and text[i] in " \t":
                i += 1
            if i >= n:
                break
            eq = text.find("=", i)
            if eq < 0:
                # A bare token (e.g. ``#EXT-X-CUE-OUT:30`` has no names): keep it under "".
                comma = text.find(",", i)
                end = n if comma < 0 else comma
                items.append(("", text[i:end].strip()))
                i = end + 1
                continue
            name = text[i:eq].strip()
            j = eq + 1
            if j < n and text[j] == '"':
                close = text.find('"', j + 1)
                if close < 0:
                    raise AttributeListError(f"unterminated quoted-string for {name!r}")
                value = text[j : close + 1]
                j = close + 1
                comma = text.find(",", j)
                i = n if comma < 0 else comma + 1
            else:
                comma = text.find(",", j)
                end = n if comma < 0 else comma
                value = text[j:end].strip()
                i = end + 1
            items.append((name, value))
        return cls(items)

    def __getitem__(self, name: str) -> str:
        return self._index[name]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items_raw(self) -> list[tuple[str, str]]:
        return list(self._items)

    def string(self, name: str) -> str | None:
        """The content of a quoted-string (or the raw text of an unquoted value)."""
        raw = self._index.get(name)
        if raw is None:
            return None
        if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
            return raw[1:-1]
        return raw

    def decimal(self, name: str) -> Fraction | None:
        """A decimal-floating-point or decimal-integer as an exact Fraction."""
        raw = self.string(name)
        if raw is None or raw == "":
            return None
        try:
            return Fraction(raw)
        except (ValueError, ZeroDivisionError):
            return None

    def integer(self, name: str) -> int | None:
        raw = self.string(name)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            return None

    def hex_bytes(self, name: str) -> bytes | None:
        """A hexadecimal-sequence (``0x...``) as bytes."""
        raw = self._index.get(name)
        if raw is None:
            return None
        raw = raw.strip('"')
        if raw[:2] in ("0x", "0X"):
            raw = raw[2:]
        try:
            return bytes.fromhex(raw if len(raw) % 2 == 0 else "0" + raw)
        except ValueError:
            return None

    def resolution(self, name: str) -> tuple[int, int] | None:
        raw = self.string(name)
        if raw is None or "x" not in raw:
            return None
        w, _, h = raw.partition("x")
        try:
            return int(w), int(h)
        except ValueError:
            return None

    def replace(self, name: str, raw_value: str) -> AttributeList:
        """A new list with ``name`` set to ``raw_value`` (appended when absent)."""
        items = [(k, raw_value if k == name else v) for k, v in self._items]
        if name not in self._index:
            items.append((name, raw_value))
        return AttributeList(items)

    def render(self) -> str:
        return ",".join(v if k == "" else f"{k}={v}" for k, v in self._items)


def quote(value: str) -> str:
    """A quoted-string; RFC 8216bis forbids CR, LF and double quotes inside it."""
    if any(c in value for c in '"\r\n'):
        raise AttributeListError(f"cannot quote {value!r}")
    return f'"{value}"'
