"""kvraft: a strongly consistent, Raft-replicated key-value store on Twisted."""

__version__ = "0.1.0"
