#!/usr/bin/env python3
"""Read stdin to the end; print bytes and seconds from first byte to EOF as JSON.

Usage: sink.py REPORT_FILE  (the consumer at the end of a benchmark's pipe)
"""
import json
import os
import sys
import time

buf = bytearray(1 << 20)
total, first = 0, None
with os.fdopen(0, "rb", buffering=0) as stdin:
    while n := stdin.readinto(buf):
        if first is None:
            first = time.perf_counter()
        total += n
end = time.perf_counter()
with open(sys.argv[1], "w") as report:
    json.dump({"bytes": total, "seconds": end - first if first else 0.0}, report)
