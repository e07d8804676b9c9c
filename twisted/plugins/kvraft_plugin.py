# The twistd plugin for `twistd kvraft`: tiny, and it imports kvraft.tap only when used.
from twisted.application.service import ServiceMaker

kvraft = ServiceMaker(
    "kvraft",
    "kvraft.tap",
    "A node of a Raft-replicated, Redis-compatible key-value store",
    "kvraft",
)
