#!/usr/bin/python3
"""Write N lines "line <i> " padded with dots to 64 bytes as fast as the
pipe takes them (argv[1]: N), to stdout and (every tenth) stderr."""
import os
import sys

n = int(sys.argv[1])
out = []
for i in range(1, n + 1):
    line = f"line {i} ".ljust(63, ".") + "\n"
    if i % 10 == 0:
        if out:
            os.write(1, "".join(out).encode())
            out = []
        os.write(2, line.encode())
    else:
        out.append(line)
if out:
    os.write(1, "".join(out).encode())
