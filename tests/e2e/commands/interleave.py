#!/usr/bin/python3
"""Write N numbered lines to stdout and N to stderr, alternating, each
flushed at once (argv[1]: N)."""
import os
import sys

n = int(sys.argv[1])
for i in range(1, n + 1):
    os.write(1, f"out {i}\n".encode())
    os.write(2, f"err {i}\n".encode())
