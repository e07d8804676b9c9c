"""A key -> value map with O(1) copy-on-write snapshots.

``KeySpace.freeze(make_holder)`` hands out the live dict itself as an immutable view and
diverts every later write into a small *delta* dict until ``holder`` (the snapshot
view) is garbage; the next ``thaw_if_released()`` then folds the delta back in, in
O(len(delta)). So a snapshot costs nothing on the applying thread however large the
map is (a ``dict.copy()`` of a million keys stalls it for 50-90 ms), and a serializer in
another thread reads a dict that nobody mutates.

Iteration order is part of the replicated state: snapshots are written in it, so two
replicas must agree on it byte for byte, including one that froze at some point and
one that never did. The delta therefore reproduces the exact order a plain dict would
have: a key deleted and written again during a freeze moves to the end, as
``del d[k]; d[k] = v`` would move it.

Values are non-empty ``bytes`` (the machine prefixes each with its revision), which
lets the empty ``bytes`` object mark a deletion inside the delta.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from itertools import chain, filterfalse
from typing import TypeVar

__all__ = ["KeySpace"]

_Holder = TypeVar("_Holder")

_TOMBSTONE = b""
"""A deleted key, inside the delta only. Live values are never empty."""


class _Freeze:
    """Tracks one frozen base: ``released`` turns true when its holder is garbage.

    The weakref callback may run in any thread (whichever drops the last reference); it
    only sets a flag, which the applying thread reads.
    """

    __slots__ = ("released", "_holder_ref")

    def __init__(self, holder: object) -> None:
        self.released = False
        self._holder_ref = weakref.ref(holder, self._on_holder_gone)

    def _on_holder_gone(self, _ref: weakref.ref) -> None:
        self.released = True


def _merge(base: dict, delta: dict, moved: set) -> None:
    """Fold ``delta`` into ``base`` so that ``base`` ends with the contents and the order
    a plain dict would have had if every write had gone to it directly."""
    for key, value in delta.items():
        if not value:
            base.pop(key, None)
            continue
        if key in moved:
            base.pop(key, None)  # deleted then written again: it belongs at the end
        base[key] = value


class KeySpace:
    """The live map. Called from one thread only (the one applying commands); the dicts
    returned by ``freeze`` may be read from any thread.

    Invariants: ``_delta is None`` exactly when ``_freeze is None``; while frozen,
    ``_base`` is never mutated and ``_count`` is the number of live keys.
    """

    __slots__ = ("_base", "_delta", "_moved", "_count", "_freeze")

    def __init__(self, data: dict[bytes, bytes] | None = None) -> None:
        self._base: dict[bytes, bytes] = {} if data is None else data
        self._delta: dict[bytes, bytes] | None = None
        self._moved: set[bytes] = set()  # keys deleted from the base, then written again
        self._count = 0
        self._freeze: _Freeze | None = None

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The value stored at ``key``, or ``None``."""
        delta = self._delta
        if delta is not None:
            value = delta.get(key)
            if value is not None:
                return value or None
        return self._base.get(key)

    def __len__(self) -> int:
        return len(self._base) if self._delta is None else self._count

    def keys(self) -> Iterator[bytes]:
        """Every live key in replicated order (as ``items``), without copying the map;
        O(len(delta)) setup while frozen. Do not write while iterating."""
        delta = self._delta
        if delta is None:
            return iter(self._base)
        base, moved = self._base, self._moved
        # Base keys that left their place: deleted, or deleted and written again (last).
        displaced = moved.union(key for key, value in delta.items() if not value)
        appended = [key for key, value in delta.items()
                    if value and (key in moved or key not in base)]
        return chain(filterfalse(displaced.__contains__, base), appended)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every live item in replicated order. O(n) copy while frozen (tests, restore)."""
        if self._delta is None:
            return iter(self._base.items())
        merged = self._base.copy()
        _merge(merged, self._delta, self._moved)
        return iter(merged.items())

    @property
    def frozen(self) -> bool:
        """Whether a snapshot holder still pins the base (writes go to the delta)."""
        return self._delta is not None

    # -- writes ----------------------------------------------------------------------------

    def live_dict(self) -> dict[bytes, bytes] | None:
        """The map itself while nothing is frozen, for a loop of plain stores (``d[key]
        = value``, the same as ``put``); ``None`` while frozen (use ``put``). Valid until
        the next ``freeze``, ``replace`` or ``clear``."""
        return self._base if self._delta is None else None

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` (non-empty) at ``key``."""
        delta = self._delta
        if delta is None:
            self._base[key] = value
            return
        old = delta.get(key)
        if old is None:
            if key not in self._base:
                self._count += 1
            delta[key] = value
        elif old:
            delta[key] = value
        else:
            del delta[key]  # deleted during this freeze: re-inserted, so it moves last
            delta[key] = value
            self._moved.add(key)
            self._count += 1

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; whether it was there."""
        delta = self._delta
        if delta is None:
            return self._base.pop(key, None) is not None
        old = delta.get(key)
        if old is None:
            if key not in self._base:
                return False
        elif not old:
            return False
        if key in self._base:
            delta[key] = _TOMBSTONE
        else:
            del delta[key]  # born during this freeze: nothing to hide in the base
        self._count -= 1
        return True

    def clear(self) -> None:
        """Remove every key. A frozen base stays with its holder, untouched."""
        self.replace({})

    def replace(self, data: dict[bytes, bytes]) -> None:
        """Make ``data`` (owned from now on) the whole content."""
        self._base = data
        self._delta = None
        self._moved = set()
        self._freeze = None

    # -- snapshots -------------------------------------------------------------------------

    def freeze(self, make_holder: Callable[[dict[bytes, bytes]], _Holder]) -> _Holder:
        """Call ``make_holder(items)`` with a dict equal to the current content and
        return its result, the *holder* (it must support weak references). ``items`` is
        never mutated while the holder is alive. O(1), unless the holder of an earlier
        freeze is still alive: then the state is first flattened into a new dict, O(n)."""
        self.thaw_if_released()
        if self._delta is not None:
            merged = self._base.copy()
            _merge(merged, self._delta, self._moved)
            self._base = merged
        holder = make_holder(self._base)
        self._delta = {}
        self._moved = set()
        self._count = len(self._base)
        self._freeze = _Freeze(holder)
        return holder

    def thaw_if_released(self) -> bool:
        """Fold the delta back into the base once the freeze holder is gone, O(delta).
        Cheap when there is nothing to do; call it often. Returns whether it thawed."""
        freeze = self._freeze
        if freeze is None or not freeze.released:
            return False
        assert self._delta is not None
        _merge(self._base, self._delta, self._moved)
        self._delta = None
        self._moved = set()
        self._freeze = None
        return True
