"""Pieces every backend shares: the IStorage triple and option checking."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from kvraft.interfaces import IStorage


@implementer(IStorage)
class Storage:
    """The three stores a backend opens over one ``data_dir``."""

    def __init__(self, log: Any, stable: Any, snapshots: Any,
                 release: Callable[[], None] | None = None):
        self.log = log
        self.stable = stable
        self.snapshots = snapshots
        self._release = release  # e.g. drop the data_dir lock, after everything else

    def close(self) -> None:
        """Close the log first (it syncs), then the stable store (it flushes a lazily
        kept commit index), then the snapshot store; then release the data_dir."""
        try:
            self.log.close()
        finally:
            try:
                self.stable.close()
            finally:
                try:
                    close = getattr(self.snapshots, "close", None)
                    if close is not None:
                        close()
                finally:
                    release, self._release = self._release, None
                    if release is not None:
                        release()

    def __repr__(self) -> str:
        return f"<Storage log={self.log!r}>"


def parse_options(backend: str, options: dict | None, defaults: dict[str, int],
                  zero_ok: frozenset = frozenset()) -> dict:
    """``defaults`` overridden by ``options``; an unknown key or a value that is not a
    positive integer (or 0, for the keys in ``zero_ok``) raises ``ValueError`` naming the
    ``storage`` config key."""
    result = dict(defaults)
    for key, value in (options or {}).items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ValueError(f"storage option {key!r} is not known to the {backend!r} "
                             f"backend (it takes: {known}); remove it from [storage]")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 \
                or (value == 0 and key not in zero_ok):
            what = "0 or a positive integer" if key in zero_ok else "a positive integer"
            raise ValueError(f"storage option {key!r} must be {what}, got {value!r}")
        result[key] = value
    return result
