#!/usr/bin/env python3
"""Read stdin to the end; write bytes and seconds (first byte to EOF) as JSON.

Usage: sink.py REPORT_FILE  (the consumer at the end of a benchmark's pipe)
"""
import json
import os
import sys
import time


def drain(read_into, report_path: str) -> None:
    """Read with *read_into* (a readinto-like callable) until it returns 0."""
    buf = bytearray(4 << 20)
    total, first = 0, None
    while n := read_into(buf):
        if first is None:
            first = time.perf_counter()
        total += n
    end = time.perf_counter()
    with open(report_path, "w") as report:
        json.dump({"bytes": total, "seconds": end - first if first else 0.0}, report)


if __name__ == "__main__":
    with os.fdopen(0, "rb", buffering=0) as stdin:
        drain(stdin.readinto, sys.argv[1])
