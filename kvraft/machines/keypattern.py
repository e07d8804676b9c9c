"""Redis glob patterns over bytes (``KEYS pattern``), matched in bounded time.

The language is Redis's ``stringmatchlen`` (``util.c``), quirks included:

* ``*`` any run of bytes, ``?`` any one byte, ``\\x`` the byte ``x`` literally (a
  trailing lone ``\\`` is a literal backslash);
* ``[abc]`` one byte of a set, ``[^abc]`` one byte outside it, ``[a-z]`` an inclusive
  range whose ends may come in either order, ``\\`` escapes inside a class too;
* ``]`` right after ``[`` (or ``[^``) closes the class: ``[]`` matches nothing and
  ``[^]`` any byte; ``[a-]`` is the range ``a``..``]`` (Redis looks two bytes ahead for
  a range before it looks for the closing bracket); an unclosed ``[`` runs to the end
  of the pattern;
* the empty key matches only the empty pattern (``KEYS *`` still lists it: the caller
  special-cases ``*`` as Redis does).

One difference: range ends compare as unsigned bytes. Redis compares C ``char`` values,
which are signed on x86, so a range with an end at or above 0x80 differs there (and only
there: Redis on ARM agrees with us).

Why not ``fnmatch``: it has no ``\\`` escapes, uses ``[!a]`` for negation, treats ``[``
without ``]`` as a literal and caches patterns without bound.

Bounded work: a pattern compiles into a Python ``re`` expression in which each star-free
segment is found with an atomic group (leftmost occurrence, never retried). Choosing the
leftmost occurrence is always right because every segment but the last is followed by a
``*``. The backtracking engine therefore never explores combinations of star
placements: matching one key costs O(len(key) * len(pattern)), where Redis's recursive
matcher is exponential in the number of stars (capped there by a nesting limit of 1000,
which a pattern of at most 2000 bytes never reaches). Callers bound ``len(pattern)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

__all__ = ["KeyPattern"]

_STAR, _QUESTION, _OPEN, _CLOSE, _CARET, _DASH, _BACKSLASH = b"*?[]^-\\"
_SPECIAL = frozenset(b"*?[\\")

# A token is one of: ``None`` for a star, an ``int`` for a literal byte, or a
# ``frozenset`` of the bytes one position may hold (``?`` and classes).
_Token = None | int | frozenset
_ANY_BYTE = frozenset(range(256))


def _parse_class(pattern: bytes, i: int) -> tuple[frozenset, int]:
    """Parse a class whose body starts at ``pattern[i]`` (just after ``[``); return the
    bytes it matches and the index just past it. Mirrors Redis's loop step by step."""
    n = len(pattern)
    negate = i < n and pattern[i] == _CARET
    if negate:
        i += 1
    members: set[int] = set()
    while True:
        if i + 1 < n and pattern[i] == _BACKSLASH:
            members.add(pattern[i + 1])
            i += 2
        elif i < n and pattern[i] == _CLOSE:
            i += 1
            break
        elif i >= n:
            break  # unclosed: the class runs to the end of the pattern
        elif i + 2 < n and pattern[i + 1] == _DASH:
            low, high = sorted((pattern[i], pattern[i + 2]))
            members.update(range(low, high + 1))
            i += 3
        else:
            members.add(pattern[i])
            i += 1
    return (_ANY_BYTE.difference(members) if negate else frozenset(members)), i


def _tokenize(pattern: bytes) -> list[_Token]:
    """The pattern as tokens, runs of stars collapsed into one."""
    tokens: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        byte = pattern[i]
        if byte == _STAR:
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
            i += 1
        elif byte == _QUESTION:
            tokens.append(_ANY_BYTE)
            i += 1
        elif byte == _OPEN:
            members, i = _parse_class(pattern, i + 1)
            tokens.append(members)
        elif byte == _BACKSLASH and i + 1 < n:
            tokens.append(pattern[i + 1])
            i += 2
        else:
            tokens.append(byte)
            i += 1
    return tokens


def _class_regex(members: frozenset) -> bytes:
    """A regex that matches exactly one byte of ``members``."""
    if not members:
        return b"(?!)"  # an empty class: nothing matches
    if members == _ANY_BYTE:
        return b"."
    parts = [b"["]
    ordered = sorted(members)
    start = previous = ordered[0]
    for byte in [*ordered[1:], None]:
        if byte is not None and byte == previous + 1:
            previous = byte
            continue
        parts.append(b"\\x%02x" % start)
        if previous != start:
            parts.append(b"-\\x%02x" % previous)
        if byte is not None:
            start = previous = byte
    parts.append(b"]")
    return b"".join(parts)


def _segment_regex(tokens: list[_Token]) -> bytes:
    return b"".join(
        re.escape(bytes((token,))) if isinstance(token, int) else _class_regex(token)
        for token in tokens
    )


def _compile_regex(tokens: list[_Token]) -> re.Pattern[bytes]:
    """The anchored, backtracking-bounded regex for ``tokens`` (use with ``match``)."""
    segments: list[list[_Token]] = [[]]
    for token in tokens:
        if token is None:
            segments.append([])
        else:
            segments[-1].append(token)
    parts = [_segment_regex(segments[0])]
    if len(segments) > 1:
        # Every middle segment is taken at its leftmost occurrence and never revisited.
        parts.extend(b"(?>.*?%s)" % _segment_regex(seg) for seg in segments[1:-1])
        parts.append(b".*" + _segment_regex(segments[-1]))
    parts.append(b"\\Z")
    return re.compile(b"".join(parts), re.DOTALL)


class KeyPattern:
    """A compiled Redis glob pattern.

    >>> KeyPattern(b"user:[0-9]*").matches(b"user:42")
    True
    """

    __slots__ = ("pattern", "literal", "_regex_match", "_regex_takes_empty")

    pattern: bytes
    literal: bytes | None
    """The one key the pattern matches when it has no wildcard (escapes resolved)."""

    def __init__(self, pattern: bytes) -> None:
        self.pattern = pattern
        tokens = _tokenize(pattern)
        if all(isinstance(token, int) for token in tokens):
            self.literal: bytes | None = bytes(tokens)  # type: ignore[arg-type]
        else:
            self.literal = None
        regex = _compile_regex(tokens)
        self._regex_match: Callable[[bytes], re.Match[bytes] | None] = regex.match
        self._regex_takes_empty = regex.match(b"") is not None

    def matches(self, key: bytes) -> bool:
        """Whether ``key`` matches, with Redis's rule that only the empty pattern matches
        the empty key."""
        if not key:
            return not self.pattern
        return self._regex_match(key) is not None

    def filter(self, keys: Iterable[bytes]) -> Iterator[bytes]:
        """The keys that match, lazily, in the order given. The loop runs in C."""
        matched = filter(self._regex_match, keys)
        if self._regex_takes_empty and self.pattern:
            return (key for key in matched if key)
        return matched

    def __repr__(self) -> str:
        return f"KeyPattern({self.pattern!r})"
