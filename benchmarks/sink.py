#!/usr/bin/env python3
"""Read stdin to the end; write bytes and seconds (first byte to EOF) as JSON,
and the share of this machine's CPU time in use meanwhile (/proc/stat, all
CPUs: every process and the kernel's network work of the lab).

Usage: sink.py REPORT_FILE  (the consumer at the end of a benchmark's pipe)
"""
import json
import os
import sys
import time


def cpu_ticks() -> tuple[int, int]:
    """This machine's (busy, all) CPU ticks so far (/proc/stat's first line)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:8]]
    return sum(fields) - fields[3] - fields[4], sum(fields)     # not idle, iowait


def drain(read_into, report_path: str) -> None:
    """Read with *read_into* (a readinto-like callable) until it returns 0."""
    buf = bytearray(4 << 20)
    total, first, ticks = 0, None, (0, 0)
    while n := read_into(buf):
        if first is None:
            first, ticks = time.perf_counter(), cpu_ticks()
        total += n
    end, (busy, all_) = time.perf_counter(), cpu_ticks()
    with open(report_path, "w") as report:
        json.dump({"bytes": total, "seconds": end - first if first else 0.0,
                   "busy": (busy - ticks[0]) / max(all_ - ticks[1], 1)}, report)


if __name__ == "__main__":
    with os.fdopen(0, "rb", buffering=0) as stdin:
        drain(stdin.readinto, sys.argv[1])
