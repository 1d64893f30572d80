#!/usr/bin/python3
"""Lines around a 100-byte line limit: 250 bytes, a short one, exactly 100,
101, a 2-byte character straddling the cut, and a long last line without a
newline."""
import os

os.write(1, b"x" * 250 + b"\n")
os.write(1, b"short\n")
os.write(1, b"y" * 100 + b"\n")
os.write(1, b"z" * 101 + b"\n")
os.write(1, b"a" + "\u00e9".encode() * 60 + b"\n")
# A long line written in pieces, ending without a newline.
for _ in range(10):
    os.write(1, b"w" * 50)
