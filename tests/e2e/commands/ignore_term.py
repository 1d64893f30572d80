#!/usr/bin/python3
"""Ignore SIGTERM, say so, and sleep until killed."""
import os
import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.write(1, f"ready {os.getpid()}\n".encode())
while True:
    time.sleep(3600)
