#!/usr/bin/python3
"""Catch SIGTERM, print that, and exit 0: a program that stops cleanly."""
import os
import signal
import sys
import time


def on_term(signum, frame):
    os.write(1, b"got SIGTERM, cleaning up\n")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
os.write(1, b"ready\n")
while True:
    time.sleep(3600)
