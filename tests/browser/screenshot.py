"""Take the dashboard screenshot for docs/: a real 3-node cluster under a light write
load, after one leadership handoff, seen from the leader.

    .venv/bin/python tests/browser/screenshot.py docs/dashboard.png
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cdp import Chromium  # noqa: E402

from kvraft.devcluster import LocalCluster  # noqa: E402

load_seconds = 12.0


def write_load(cluster: LocalCluster, stop: threading.Event) -> None:
    """Pipelined writes through every node in turn (followers forward to the leader)."""
    clients = {n: cluster.redis(n, socket_timeout=2) for n in cluster.nodes}
    i = 0
    while not stop.is_set():
        for client in clients.values():
            if stop.is_set():
                break
            try:
                pipe = client.pipeline(transaction=False)
                for _ in range(20):
                    i += 1
                    pipe.set(f"user:{i % 5000}", f"value-{i}")
                pipe.execute()
            except Exception:
                time.sleep(0.1)  # that node is restarting: try the next
            time.sleep(0.01)
    for client in clients.values():
        client.close()


def main(out: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", size=3,
                               raft={"election_timeout_ms": 1000,
                                     "heartbeat_interval_ms": 100})
        cluster.prepare()
        cluster.start_all()
        stop = threading.Event()
        loader = threading.Thread(target=write_load, args=(cluster, stop), daemon=True)
        try:
            first = cluster.wait_for_leader()
            loader.start()
            time.sleep(3)
            cluster.stop(first)  # hands leadership over
            leader = cluster.wait_for_leader(among=[n for n in cluster.nodes if n != first])
            cluster.start(first)
            time.sleep(load_seconds)
            url = f"http://{cluster.host}:{cluster.nodes[leader].http_port}/"
            with Chromium(Path(tmp) / "profile") as browser:
                page = browser.new_page(width=1360, height=980)
                page.navigate(url)
                page.wait_for("Number(document.body.dataset.updates) >= 3")
                Path(out).write_bytes(page.screenshot())
        finally:
            stop.set()
            loader.join(timeout=5)
            cluster.close()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"))
