"""Prometheus metrics in one object that owns its registry (no global default registry), so
that tests and several apps in one process never collide."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every series modelhost exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "modelhost_requests", "Requests by model, route and status.",
            ["model", "route", "status"], registry=r,
        )
        self.decode = Histogram(
            "modelhost_decode_seconds", "Image decode and preprocess time.", ["model"],
            buckets=_SECONDS, registry=r,
        )
        self.queue = Histogram(
            "modelhost_queue_seconds", "Time waiting for a batch slot.", ["model"],
            buckets=_SECONDS, registry=r,
        )
        self.inference = Histogram(
            "modelhost_inference_seconds", "Model run time per batch, as the worker saw it.",
            ["model"], buckets=_SECONDS, registry=r,
        )
        self.total = Histogram(
            "modelhost_request_seconds", "Whole prediction time inside the server.", ["model"],
            buckets=_SECONDS, registry=r,
        )
        self.invalid_outputs = Counter(
            "modelhost_invalid_outputs", "Predictions refused: the model output NaN or inf.",
            ["model"], registry=r,
        )
        self.shadow_dropped = Counter(
            "modelhost_shadow_dropped", "Shadow runs not made: queues half full, or the "
            "shadow version not ready or failing.", ["model"], registry=r,
        )
        self.gc_pause = Histogram(
            "modelhost_gc_pause_seconds", "Garbage collections of the server process, by "
            "generation: each stops every thread of it (modelhost serve only).",
            ["generation"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25, 0.5, 1), registry=r,
        )
        self.batch_size = Histogram(
            "modelhost_batch_size", "Requests per model batch.", ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )

    def watch(self, state: Callable[[], Iterable[dict]]) -> None:
        """Export per-model gauges (queue depth, live workers, restarts, load time) that
        ``state`` reports when Prometheus scrapes."""
        self.registry.register(_StateCollector(state))

    def watch_prediction_log(self, state: Callable[[], dict]) -> None:
        """Export the prediction log's health: database reachable, segments waiting in the
        journal, records stored (alert when the database stays away or the backlog grows)."""
        self.registry.register(_LogCollector(state))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LogCollector:
    def __init__(self, state: Callable[[], dict]) -> None:
        self._state = state

    def describe(self):
        return []

    def collect(self):
        state = self._state()
        yield GaugeMetricFamily("modelhost_prediction_log_database_up",
                                "1 when the prediction log database takes writes.",
                                value=1 if state["database"] == "ok" else 0)
        yield GaugeMetricFamily("modelhost_prediction_log_waiting_segments",
                                "Journal segments waiting for the database.",
                                value=state["waiting_segments"])
        yield CounterMetricFamily("modelhost_prediction_log_records_stored",
                                  "Prediction and feedback records stored in the database.",
                                  value=state["stored_records"])


class _StateCollector:
    """Reads per-model state when Prometheus scrapes."""

    def __init__(self, state: Callable[[], Iterable[dict]]) -> None:
        self._state = state

    def describe(self):
        return []

    def collect(self):
        depth = GaugeMetricFamily("modelhost_queue_depth", "Requests queued.", labels=["model"])
        ready = GaugeMetricFamily("modelhost_workers_ready", "Live workers.", labels=["model"])
        load = GaugeMetricFamily(
            "modelhost_model_load_seconds", "Time to load and warm up.", labels=["model"]
        )
        restarts = CounterMetricFamily(
            "modelhost_worker_restarts", "Worker processes restarted.", labels=["model"]
        )
        info = GaugeMetricFamily(
            "modelhost_model_info", "A served model: version, format, precision and the "
            "execution providers its workers run on.",
            labels=["model", "version", "format", "precision", "providers"],
        )
        for row in self._state():
            name = row["model"]
            info.add_metric([name, row["version"], row["format"], row["precision"],
                             row["providers"]], 1)
            depth.add_metric([name], row["queue_depth"])
            ready.add_metric([name], row["workers_ready"])
            load.add_metric([name], row["load_seconds"])
            restarts.add_metric([name], row["restarts"])
        yield from (depth, ready, load, restarts, info)
