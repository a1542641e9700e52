"""A prober in a process of its own, as a kubelet or a balancer is: every ``--interval``
seconds, for each URL, a new connection with one ``GET`` (``Connection: close``), timed from
connect to the last byte. Prints one JSON object: per URL, the latencies' percentiles in ms,
the number of probes and the failures (status other than 200 or 503, or no answer in 2 s).

run.py starts it beside the c=64 level, so that a probe's latency is the server's, not the
load generator's event loop (which runs 64 connections of its own).

    python benchmarks/probe.py --seconds 15 http://127.0.0.1:8000/healthz http://...
"""

from __future__ import annotations

import argparse
import http.client
import json
import time
from urllib.parse import urlsplit


def probe(url: str) -> float | None:
    """Seconds for one probe, or None when it failed."""
    parts = urlsplit(url)
    started = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
    try:
        connection.request("GET", parts.path, headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        ok = response.status in (200, 503)
    except OSError:
        ok = False
    finally:
        connection.close()
    return time.perf_counter() - started if ok else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    times: dict[str, list[float]] = {url: [] for url in args.urls}
    failures = dict.fromkeys(args.urls, 0)
    end = time.monotonic() + args.seconds
    while (now := time.monotonic()) < end:
        for url in args.urls:
            seconds = probe(url)
            if seconds is None:
                failures[url] += 1
            else:
                times[url].append(seconds * 1000)
        time.sleep(max(0.0, args.interval - (time.monotonic() - now)))
    print(json.dumps({url: {"probes": len(values), "failures": failures[url],
                            **{f"p{q}": percentile(values, q) for q in (50, 90, 99)},
                            "max": max(values, default=float("nan"))}
                      for url, values in times.items()}))


if __name__ == "__main__":
    main()
