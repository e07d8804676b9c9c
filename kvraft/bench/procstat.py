"""CPU time and memory of processes from ``/proc`` (psutil is not a dependency).

``ProcSampler`` samples a set of pids (the nodes, the load generator) once a second
while a benchmark runs: CPU seconds from ``/proc/<pid>/stat`` (utime + stime), resident
memory from ``/proc/<pid>/status`` (``VmRSS``, and ``VmHWM``, the kernel's own peak).
A process that exits is simply no longer sampled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

clock_ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read_proc(pid: int, name: str) -> bytes | None:
    """The text of ``/proc/<pid>/<name>``; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far; None if it is gone."""
    data = _read_proc(pid, "stat")
    return None if data is None else parse_stat_cpu(data)


def parse_stat_cpu(data: bytes) -> float:
    """User + system CPU seconds from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may hold spaces or parentheses, so
    fields are counted from the last ``)``: utime and stime are fields 14 and 15.
    """
    rest = data[data.rindex(b")") + 2:].split()
    utime, stime = int(rest[11]), int(rest[12])
    return (utime + stime) / clock_ticks_per_s


def memory_kib(pid: int) -> tuple[int, int] | None:
    """``(VmRSS, VmHWM)`` of ``pid`` in KiB; None if it is gone."""
    data = _read_proc(pid, "status")
    return None if data is None else parse_status_memory(data)


def parse_status_memory(data: bytes) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` in KiB from the text of ``/proc/<pid>/status``."""
    rss = hwm = 0
    for line in data.splitlines():
        if line.startswith(b"VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith(b"VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


MACHINE_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
"""The first eight columns of ``/proc/stat``'s ``cpu`` line, in order."""


def machine_cpu_ticks() -> list[int] | None:
    """The machine's CPU time so far per ``MACHINE_CPU_FIELDS``; None without /proc."""
    try:
        with open("/proc/stat", "rb") as f:
            return parse_machine_cpu(f.readline())
    except (OSError, ValueError):
        return None


def parse_machine_cpu(line: bytes) -> list[int]:
    """The ``MACHINE_CPU_FIELDS`` ticks from ``/proc/stat``'s ``cpu`` line (older kernels
    lack the last columns: they count as 0)."""
    fields = line.split()
    if not fields or fields[0] != b"cpu":
        raise ValueError(f"not the cpu line of /proc/stat: {line[:40]!r}")
    ticks = [int(x) for x in fields[1:1 + len(MACHINE_CPU_FIELDS)]]
    return ticks + [0] * (len(MACHINE_CPU_FIELDS) - len(ticks))


def machine_cpu_percent(before: list[int] | None,
                        after: list[int] | None) -> dict[str, float] | None:
    """How the machine's CPU time between two ``machine_cpu_ticks`` was spent, in percent
    per field. ``steal`` is time the hypervisor gave to other guests: on a shared VM, a
    run with much of it measured a slower machine."""
    if before is None or after is None:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent)
    if total <= 0:
        return None
    return {name: round(100 * ticks / total, 1)
            for name, ticks in zip(MACHINE_CPU_FIELDS, spent, strict=True)}


MACHINE_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")
"""The ``MACHINE_CPU_FIELDS`` that are work done on this machine: not idle, not waiting for
a disk (``iowait``), not time the hypervisor gave to other guests (``steal``)."""
_busy_columns = [MACHINE_CPU_FIELDS.index(name) for name in MACHINE_BUSY_FIELDS]


def machine_busy_s(before: list[int] | None, after: list[int] | None) -> float | None:
    """CPU seconds the machine worked, on all its cores, between two ``machine_cpu_ticks``:
    every process and the kernel (a loopback packet's receive runs as a softirq)."""
    if before is None or after is None:
        return None
    return sum(after[i] - before[i] for i in _busy_columns) / clock_ticks_per_s


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews figures)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


@dataclass
class ProcStats:
    """What was seen of one process during a run."""

    name: str
    pid: int
    cpu_start_s: float | None = None
    cpu_end_s: float | None = None
    rss_peak_kib: int = 0
    rss_last_kib: int = 0
    hwm_kib: int = 0
    cpu_series: list[float] = field(default_factory=list)  # CPU % per sample interval

    def cpu_used_s(self) -> float:
        """CPU seconds used between the first and the last sample."""
        if self.cpu_start_s is None or self.cpu_end_s is None:
            return 0.0
        return max(0.0, self.cpu_end_s - self.cpu_start_s)

    def to_dict(self, wall_s: float) -> dict:
        """Plain data: CPU seconds and average percent of one core, memory in MiB."""
        used = self.cpu_used_s()
        return {"pid": self.pid, "cpu_s": round(used, 3),
                "cpu_percent": round(100.0 * used / wall_s, 1) if wall_s > 0 else 0.0,
                "rss_peak_mib": round(self.rss_peak_kib / 1024.0, 1),
                "rss_end_mib": round(self.rss_last_kib / 1024.0, 1),
                "rss_hwm_mib": round(self.hwm_kib / 1024.0, 1),
                "cpu_series": list(self.cpu_series)}


class ProcSampler:
    """Samples named processes; call ``sample(interval_s)`` about once a second."""

    def __init__(self, pids: dict[str, int]):
        self.stats = {name: ProcStats(name, pid) for name, pid in pids.items()}

    def sample(self, interval_s: float = 0.0) -> dict[str, float]:
        """Take one sample; return each process's CPU percent over ``interval_s``
        (since the previous sample), for the progress line."""
        percents = {}
        for name, st in self.stats.items():
            cpu = cpu_seconds(st.pid)
            mem = memory_kib(st.pid)
            if cpu is None or mem is None:
                continue
            if st.cpu_start_s is None:
                st.cpu_start_s = cpu
            elif interval_s > 0 and st.cpu_end_s is not None:
                percent = 100.0 * (cpu - st.cpu_end_s) / interval_s
                st.cpu_series.append(round(percent, 1))
                percents[name] = percent
            st.cpu_end_s = cpu
            rss, hwm = mem
            st.rss_last_kib = rss
            st.rss_peak_kib = max(st.rss_peak_kib, rss)
            st.hwm_kib = max(st.hwm_kib, hwm)
        return percents

    def to_dict(self, wall_s: float) -> dict[str, dict]:
        """Every process's figures (see ``ProcStats.to_dict``)."""
        return {name: st.to_dict(wall_s) for name, st in self.stats.items()}
