"""Watching a victim process in the hostile-peer tests: memory, file
descriptors and CPU, sampled from /proc while it runs."""

from __future__ import annotations

import os
import threading
import time


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Watch:
    """Samples *pid* every 50 ms until it ends: peak RSS (VmHWM, KiB) and
    the most open file descriptors seen."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_rss_kib = 0
        self.peak_fds = 0
        self.samples = 0
        self.fds_seen: list[tuple[float, int]] = []   # (time.monotonic(), open fds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in open(f"/proc/{self.pid}/status"):
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
                fds = open_fds(self.pid)
                self.peak_fds = max(self.peak_fds, fds)
                self.fds_seen.append((time.monotonic(), fds))
                self.samples += 1
            except (OSError, ValueError):
                return                       # it has ended
            time.sleep(0.05)

    def peak_fds_since(self, since: float) -> int:
        """The most open file descriptors seen from *since* (monotonic) on."""
        return max((fds for at, fds in self.fds_seen if at >= since), default=0)

    def stop(self) -> "Watch":
        self._stop.set()
        self._thread.join(5)
        return self

    def fds(self) -> int:
        return open_fds(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)
