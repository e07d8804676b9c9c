"""kvraft.client: the Redis-compatible client port (DESIGN.md section 4).

* ``resp``: incremental RESP2/inline request parser and RESP2/RESP3 reply encoder;
* ``commands``: the command table (arity, flags, route, validation, normalization);
* ``local``: connection commands answered without the backend (PING, HELLO, INFO...);
* ``server``: ``ClientFactory`` / ``ClientProtocol`` / ``ClientLimits``;
* ``backend``: ``IClientBackend`` (what the node implements) and ``IClientACL``;
* ``errors``: the exceptions a backend fails requests with, and their replies.

Nothing is imported here, so ``kvraft.client.backend`` and ``kvraft.client.errors`` stay
cheap to import from the node.
"""
