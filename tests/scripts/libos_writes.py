"""Exactly N os.write calls of one byte to /dev/null (N = argv[1]), nothing else routed
between opening and closing; then one write of the result to stdout (routed too)."""
import os
import sys

n = int(sys.argv[1])
fd = os.open(os.devnull, os.O_WRONLY)
for _ in range(n):
    os.write(fd, b"x")
os.close(fd)
sys.stdout.write(f"wrote {n}\n")
sys.stdout.flush()
