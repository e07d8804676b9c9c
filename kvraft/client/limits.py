"""The limits and counters of the client port (``ClientLimits``, ``ClientStats``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kvraft.client.resp import (
    args_max_default,
    bulk_bytes_max_default,
    line_bytes_max_default,
    request_bytes_max_default,
)


@dataclass(frozen=True)
class ClientLimits:
    """Every limit of the client port (DESIGN.md section 4). Sizes in bytes."""

    line_bytes_max: int = line_bytes_max_default
    """Longest inline command line or RESP header line."""
    bulk_bytes_max: int = bulk_bytes_max_default
    """Largest single argument; a larger ``$<length>`` header is refused unread."""
    args_max: int = args_max_default
    """Most arguments in one command."""
    request_bytes_max: int = request_bytes_max_default
    """Most argument bytes in one command (at least ``bulk_bytes_max``)."""
    pending_requests_max: int = 1024
    """Requests parsed but not yet answered, per connection; beyond it reading pauses."""
    pending_bytes_max: int = 64 * 1024 * 1024
    """Argument and reply bytes of those requests, per connection; beyond it reading
    pauses. A connection holds at most this plus one request."""
    output_bytes_max: int = 128 * 1024 * 1024
    """Replies written while the client does not read (its transport's buffer is full
    and has paused us); beyond it the connection is dropped, as Redis does at its
    client-output-buffer-limit. Requests already dispatched keep completing while we
    wait, and this caps what they pile up."""
    connections_max: int = 10000
    """Open client connections per listener; more are answered
    ``-ERR max number of clients reached`` and closed."""
    idle_timeout_s: float = 0.0
    """Close a connection that sent nothing for this long and awaits no reply; 0 = never
    (Redis' default too: connection pools keep idle connections open on purpose)."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "idle_timeout_s":
                if value < 0:
                    raise ValueError(f"idle_timeout_s must be 0 (never) or more, not {value}")
            elif value < 1:
                raise ValueError(f"{field.name} must be at least 1, not {value}")
        if self.request_bytes_max < self.bulk_bytes_max:
            raise ValueError(
                f"request_bytes_max ({self.request_bytes_max}) must be at least "
                f"bulk_bytes_max ({self.bulk_bytes_max})")

    @classmethod
    def from_settings(cls, settings: object) -> ClientLimits:
        """Limits taken from any object with same-named attributes (such as
        ``kvraft.config.ClientSettings``); missing ones keep their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: getattr(settings, n) for n in names if hasattr(settings, n)})


@dataclass
class ClientStats:
    """Counters of one listener, for metrics."""

    connections_accepted: int = 0
    connections_refused: int = 0
    commands: int = 0
    protocol_errors: int = 0
    internal_errors: int = 0
    idle_closed: int = 0
    output_overflows: int = 0
