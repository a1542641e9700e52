"""Structured JSON logs: one object per line, user-supplied text escaped by the encoder
(or plain text lines when a person reads the terminal: ``--log-format``).

Fields passed as ``extra={"fields": {...}}`` are merged into the line, so a prediction's log
line carries its request id, model, version, batch size, durations and status as data. Every
logger (uvicorn's too) goes through the one JSON formatter, so a newline or control character
in a path, header or label can never start a forged line.

Logging never fails or stalls a request: records are formatted by the caller and appended to a
bounded in-memory buffer, and one thread writes them out in rounds (every 50 ms). If the sink
fails (disk full, closed pipe) or stalls (a pipe nobody reads), lines are dropped, not
requests.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import threading
import time

import orjson


def _logger_name(record: logging.LogRecord) -> str:
    """uvicorn logs its start-up and shutdown as ``uvicorn.error``; they are not errors."""
    return "uvicorn" if record.name == "uvicorn.error" else record.name


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": _logger_name(record),
            "msg": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """For a person at a terminal: ``12:00:01 INFO  model digits loaded``; warnings and errors
    say where they come from. Fields stay in the JSON lines (--log-format json); control
    characters in the message are escaped, so user input cannot forge a line here either."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        origin = f" [{_logger_name(record)}]" if record.levelno >= logging.WARNING else ""
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        text = orjson.dumps(message).decode()[1:-1] if _has_control(message) else message
        return f"{stamp} {record.levelname:<7}{text}{origin}"


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


QUEUE_LINES = 10_000
WRITE_INTERVAL = 0.05  # seconds between the writer thread's rounds


class _BufferingHandler(logging.Handler):
    """Formats in the caller's thread and appends the line to a deque; the writer thread
    takes them in rounds. A full buffer (stalled sink) drops the line.

    Appending to a deque is one C call: it takes no lock and wakes no thread, and it is
    reentrant, so a line logged from a signal handler that interrupted another cannot
    deadlock (a ``queue.Queue`` did, once). A ``SimpleQueue`` with a listener thread woke
    that thread for every line: 20 % of the HTTP process's samples at the tiny model's rate
    went to that hand-over (py-spy, benchmarks/profile.py).
    """

    def __init__(self) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque()

    def handle(self, record: logging.LogRecord) -> bool:
        """As ``Handler.handle`` without its lock: the deque needs none."""
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < QUEUE_LINES:
            try:
                self.lines.append(self.format(record))
            except Exception:
                self.handleError(record)


class _LineWriter:
    """Writes the buffered lines to a file descriptor, a round every ``WRITE_INTERVAL``.

    No buffered stream: a write blocked on a stalled pipe holds no lock that
    ``logging.shutdown`` or the interpreter's exit would wait for. Failed writes (disk full,
    closed pipe) drop the lines.
    """

    def __init__(self, lines: collections.deque[str], fd: int) -> None:
        self.lines = lines
        self.fd = fd

    def run(self) -> None:
        while True:
            time.sleep(WRITE_INTERVAL)
            self.write_pending()

    def write_pending(self) -> None:
        batch: list[str] = []
        with contextlib.suppress(IndexError):  # popleft is atomic; the deque may empty
            while True:
                batch.append(self.lines.popleft())
        if not batch:
            return
        data = ("\n".join(batch) + "\n").encode("utf-8", "replace")
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(self.fd, data):]


def announce(text: str) -> None:
    """Write one line to standard output (the served URL, which scripts and tests read).

    Unlike ``print``, a failing stdout (``> /dev/full``, a closed pipe) drops the line instead
    of raising: the console is for people, and the server keeps serving without it.
    """
    data = (text + "\n").encode("utf-8", "replace")
    with contextlib.suppress(OSError):
        while data:
            data = data[os.write(1, data):]


@contextlib.contextmanager
def quiet_stderr(quiet: bool = True):
    """Send file descriptor 2 to /dev/null for the block (unless ``quiet`` is false).

    TensorFlow's C++ start-up lines (oneDNN, CPU features, absl) are written straight to the
    descriptor, before and regardless of ``TF_CPP_MIN_LOG_LEVEL``; they are noise to someone
    running ``modelhost inspect``, and would break the server's one-JSON-object-per-line log.
    Python errors are not lost: they are raised, and reported after the block.
    """
    if not quiet:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def configure(level: str, fmt: str = "json") -> None:
    """Send modelhost's and uvicorn's logs to stderr through a writer thread: JSON lines, or
    text lines for a person (``fmt`` "text"; "auto": text when stderr is a terminal)."""
    logging.raiseExceptions = False  # a failing sink must not print tracebacks to itself
    handler = _BufferingHandler()
    text = fmt == "text" or (fmt == "auto" and os.isatty(2))
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    writer = _LineWriter(handler.lines, os.dup(2))
    # a daemon thread: a stalled sink cannot keep the process alive
    threading.Thread(target=writer.run, name="log-writer", daemon=True).start()
    atexit.register(_flush, handler.lines)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def _flush(lines: collections.deque[str], within: float = 2.0) -> None:
    """At exit, give the writer thread a moment to write what is buffered (not forever)."""
    until = time.monotonic() + within
    while lines and time.monotonic() < until:
        time.sleep(0.01)
