"""kvraft.runtime: the node process's garbage-collector settings."""

import subprocess
import sys

from kvraft import runtime


def test_tune_gc_freezes_startup_state_and_raises_thresholds():
    # In a fresh interpreter: the test process's own collector is left alone.
    code = (
        "import gc\n"
        "from kvraft import runtime\n"
        "state = [[i] for i in range(1000)]\n"
        "before = gc.get_freeze_count()\n"
        "old = runtime.tune_gc()\n"
        "print(old != gc.get_threshold(), gc.get_freeze_count() >= before + 1000,"
        " gc.get_threshold())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    expected = (runtime.GC_GEN0_THRESHOLD, runtime.GC_GEN1_THRESHOLD,
                runtime.GC_GEN2_THRESHOLD)
    assert done.stdout.split(" ", 2) == ["True", "True", f"{expected}\n"]
    assert runtime.GC_GEN0_THRESHOLD > 700
