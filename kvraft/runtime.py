"""Process-wide settings of a node's Python runtime: the garbage collector.

A node allocates a few short-lived objects per request (parsed commands, replies, log
entries, messages) and keeps a large, long-lived state (the key space, the log's index and
tail cache, certificates, modules). CPython's default collector thresholds (700, 10, 10)
run a young collection every 700 net allocations and, every hundred of those, a full one
that walks every tracked object the process holds; at tens of thousands of requests per
second that is hundreds of young collections a second and a full one every few, each
full one a pause that grows with the state.

``tune_gc`` (called once the node's state is loaded, before it serves):
- moves every object alive at that point to the permanent generation (``gc.freeze``):
  startup state (restored snapshot, modules, configuration) is never walked again;
- raises the young threshold to ``GC_GEN0_THRESHOLD`` so young collections run ~30 times
  less often and find mostly garbage, and the older thresholds so full collections are
  rare (CPython also skips a full collection until the objects that survived since the
  last one are a quarter of those that existed then).
Reference counting still frees everything that is not in a cycle at once; only cyclic
garbage waits longer, and the node creates little of it.
"""

from __future__ import annotations

import gc

GC_GEN0_THRESHOLD = 20_000
"""Net allocations of tracked objects between two young collections (CPython: 700)."""
GC_GEN1_THRESHOLD = 20
"""Young collections between two middle ones (CPython: 10)."""
GC_GEN2_THRESHOLD = 50
"""Middle collections between two full ones (CPython: 10)."""
GC_THRESHOLDS = (GC_GEN0_THRESHOLD, GC_GEN1_THRESHOLD, GC_GEN2_THRESHOLD)


def tune_gc() -> tuple[int, int, int]:
    """Freeze what is alive now and raise the collector's thresholds; the old ones."""
    old = gc.get_threshold()
    gc.collect()  # what startup left as garbage should not be frozen forever
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return old
