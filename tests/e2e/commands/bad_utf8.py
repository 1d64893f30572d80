#!/usr/bin/python3
"""Write lines of raw bytes, valid and invalid UTF-8, to stdout, ending with
a partial line that has no newline."""
import os

LINES = [
    b"plain ascii",
    b"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",  # valid 2-, 3- and 4-byte sequences
    b"bad \xff byte",                               # never valid
    b"overlong \xc0\xaf slash",                     # overlong form of '/'
    b"surrogate \xed\xa0\x80 half",                 # UTF-16 surrogate
    b"too big \xf4\x90\x80\x80 end",                # past U+10FFFF
    b"cut \xe2\x82",                                # a sequence cut by the newline
    b"nul \x00 inside",
    b"carriage\r return",
    b"lone \x80 continuation",
]
os.write(1, b"\n".join(LINES) + b"\n" + b"no newline \xc3")
