"""CPU time from /proc: of one process, and of the whole machine.

The workloads run the engine, the receiver, Postgres and the load generators on the same cores, so
a rate alone cannot say which of them the machine ran out of; CPU seconds per delivery can.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a local process used so far (/proc/PID/stat); OSError if it is
    not on this machine or gone."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def machine_cpu_seconds() -> float:
    """CPU time all processes on this machine used so far, summed over the cores.

    /proc/stat's first line less idle, iowait and steal (time the hypervisor gave to other
    machines, which no process here used).
    """
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, _steal = fields
    return (user + nice + system + irq + softirq) * _TICK_S
