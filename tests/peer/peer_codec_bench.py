"""Codec throughput: `python tests/peer/peer_codec_bench.py` prints encode/decode rates.

Measured on the shared CI box, these are the figures the peer transport's report quotes.
"""

import time

from kvraft.peer.codec import FrameBuffer, decode_body, encode_message
from kvraft.raft.types import Entry, Message, MsgType

HEARTBEAT = Message(MsgType.MsgHeartbeat, to="n2", frm="n1", term=7, commit=12345,
                    context=b"r42")
APPEND_16K = Message(MsgType.MsgApp, to="n2", frm="n1", term=7, log_term=7, index=1000,
                     commit=999, entries=[Entry(7, 1001, data=b"x" * 16384)])


def rates(msg: Message, rounds: int) -> dict[str, float]:
    """Messages per second for encode, decode, framing, and encode+decode together."""
    frame = encode_message(msg)
    body = frame[4:]
    start = time.perf_counter()
    for _ in range(rounds):
        encode_message(msg)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(rounds):
        decode_body(body)
    decode_s = time.perf_counter() - start
    buf = FrameBuffer(1 << 24)
    start = time.perf_counter()
    for _ in range(rounds):
        buf.feed(frame)
    frame_s = time.perf_counter() - start
    return {"frame_bytes": len(frame), "encode": rounds / encode_s,
            "decode": rounds / decode_s, "framing": rounds / frame_s,
            "round_trip": rounds / (encode_s + decode_s)}


if __name__ == "__main__":
    for name, msg, rounds in (("heartbeat", HEARTBEAT, 50000), ("MsgApp 16 KiB", APPEND_16K,
                                                                20000)):
        r = rates(msg, rounds)
        print(f"{name:>14}: {r['frame_bytes']:>6} B/frame  encode {r['encode']:>9,.0f}/s  "
              f"decode {r['decode']:>9,.0f}/s  framing {r['framing']:>9,.0f}/s  "
              f"encode+decode {r['round_trip']:>9,.0f}/s")
