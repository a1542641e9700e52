"""Logging from a signal handler never deadlocks the thread it interrupted (a server that got
SIGTERM while logging under load once hung forever in the log queue's lock)."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import logging, signal, sys, time
from modelhost import logs

logs.configure("info")
log = logging.getLogger("modelhost.test")
fired = 0

def on_alarm(sig, frame):
    global fired
    fired += 1
    log.info("from the signal handler")

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
until = time.monotonic() + 2
while time.monotonic() < until:
    log.info("from the main thread")
signal.setitimer(signal.ITIMER_REAL, 0)
print(fired, file=sys.stdout, flush=True)
"""


def test_a_signal_handler_that_logs_never_deadlocks_the_logger():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) > 100  # the handler really interrupted the logging loop
