"""Self-tuning of the worker and batching layout: real worker pools and a real batcher measured
in this process, the cache, the pins, and a real server reporting where its layout came from.

Tuning is off for the rest of the suite (conftest.py); these tests turn it on. Budgets are small
so each measurement takes a few seconds; what is asserted is the plan (phases, counts, the
choice and its sources), never how fast anything ran.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from modelhost.assembly import tuner_for
from modelhost.repository import load_repository
from modelhost.settings import Settings
from modelhost.tuning import (
    MIN_PHASE,
    ROUNDS,
    STOP_RESERVE,
    Layout,
    Measurement,
    Pins,
    candidates,
    file_digest,
    latency_bound,
    winner,
)
from modelhost.types import ModelConfig

from .support import rgb_model, serve_in_process, wait_until_ready

PINNED_TOML = "[workers]\nreplicas = 1\nthreads = 1\n[batching]\nmax_batch_size = 2\n"


def _tuner(folder: Path, cache: Path, budget: float, **flags):
    (spec,) = load_repository(folder)
    return tuner_for(spec, Settings(cache_dir=cache, tune_budget=budget, **flags))


# -- the plan ------------------------------------------------------------------------------------

def test_candidates_fill_the_cores_without_oversubscribing():
    assert candidates(2, Pins()) == [Layout(1, 2, 1), Layout(1, 2, 8), Layout(2, 1, 1),
                                     Layout(2, 1, 8)]
    assert candidates(1, Pins()) == [Layout(1, 1, 1), Layout(1, 1, 8)]
    assert {(c.replicas, c.threads) for c in candidates(4, Pins())} == {(1, 4), (2, 2), (4, 1)}
    assert max(c.replicas for c in candidates(64, Pins())) == 8  # each worker holds a model
    # a pinned value replaces the candidates' own; the duplicates it makes are measured once
    threads = Pins.of(ModelConfig(threads=1, pinned=("threads",)), {})
    assert candidates(2, threads) == [Layout(1, 1, 1), Layout(1, 1, 8), Layout(2, 1, 1),
                                      Layout(2, 1, 8)]
    batch = Pins.of(ModelConfig(), {"max_batch_size": 4, "replicas": None})
    assert candidates(2, batch) == [Layout(1, 2, 4), Layout(2, 1, 4)]


def test_command_line_wins_over_modelhost_toml():
    config = ModelConfig(replicas=3, threads=1, pinned=("replicas", "threads"))
    pins = Pins.of(config, {"replicas": 2, "threads": None, "max_batch_size": None})
    assert pins.over(Layout(1, 0, 8)) == Layout(2, 1, 8)
    assert pins.sources("measured") == {"replicas": "command line", "threads": "modelhost.toml",
                                        "max_batch_size": "measured"}
    assert not pins.complete


def test_winner_is_the_best_throughput_within_the_latency_bound():
    fast = Measurement(Layout(1, 2, 1), p50_ms=10.0, per_second=100.0)
    near = Measurement(Layout(2, 1, 8), p50_ms=10.9, per_second=150.0)  # within 1 ms
    slow = Measurement(Layout(2, 1, 1), p50_ms=11.1, per_second=300.0)  # beyond it
    assert latency_bound([fast, near, slow]) == pytest.approx(11.0)
    assert winner([fast, near, slow]) == near
    # on a slow model the bound is 5 %, not 1 ms
    slow_model = [Measurement(Layout(1, 2, 1), 100.0, 10.0),
                  Measurement(Layout(2, 1, 8), 104.9, 13.0),
                  Measurement(Layout(2, 1, 1), 105.1, 20.0)]
    assert latency_bound(slow_model) == pytest.approx(105.0)
    assert winner(slow_model) == slow_model[1]
    # on a fast model the bound is 1 ms, not 5 %
    tiny = [Measurement(Layout(1, 2, 1), 2.0, 500.0), Measurement(Layout(2, 1, 8), 2.9, 900.0)]
    assert winner(tiny) == tiny[1]
    assert winner([Measurement(Layout(1, 2, 1), skipped="out of budget")]) is None


# -- measuring with real pools ---------------------------------------------------------------------

@pytest.mark.slow
def test_measures_within_the_budget_then_the_cache_measures_nothing(tmp_path):
    folder = tmp_path / "rgb"
    rgb_model(folder)
    tuner = _tuner(folder, tmp_path / "cache", budget=10.0)
    tuner.cores = 2  # the plan for 2 cores, whatever runs the test
    choice = asyncio.run(tuner.choose())

    assert choice.sources == dict.fromkeys(("replicas", "threads", "max_batch_size"), "measured")
    assert [m.layout for m in choice.measurements] == candidates(2, Pins())
    assert all(m.p50_ms and m.p50_ms > 0 and m.per_second and m.per_second > 0
               for m in choice.measurements), choice.measurements
    assert choice.layout == winner(list(choice.measurements)).layout
    kinds = [p.kind for p in choice.phases]
    # one pool per replicas × threads: its start, one latency phase (the batch size cannot
    # matter one request at a time), one throughput phase per batch size
    # in two interleaved rounds
    assert kinds == ["start", *["latency", "throughput", "throughput"] * ROUNDS] * 2
    assert [p.layout.max_batch_size for p in choice.phases[:4]] == [1, 1, 1, 8]
    assert all(p.requests > 0 for p in choice.phases if p.kind != "start")
    # the starts as they took, the phases as planned: all within the budget, less the time
    # kept back for stopping the last pool (a pool that stops sooner leaves its rest to the next)
    assert sum(p.seconds for p in choice.phases) <= 10.0 - STOP_RESERVE + 1e-6

    record = json.loads(next((tmp_path / "cache" / "tuning").glob("rgb-*.json")).read_text())
    assert record["key"]["model_sha256"] == file_digest(folder / "model.onnx")
    assert record["key"]["cores"] == 2 and record["key"]["cpu"]
    assert Layout(**record["layout"]) == choice.layout
    assert len(record["measurements"]) == 4

    again = _tuner(folder, tmp_path / "cache", budget=10.0)
    again.cores = 2
    cached = asyncio.run(again.choose())
    assert cached.layout == choice.layout
    assert set(cached.sources.values()) == {"cache"}
    assert cached.phases == () and cached.measurements == () and cached.seconds == 0.0

    # another machine (here: another core count) is another key: measured afresh
    other = _tuner(folder, tmp_path / "cache", budget=0.2)
    other.cores = 1
    assert asyncio.run(other.choose()).sources["replicas"] == "default"  # 0.2 s: nothing fits


def test_a_budget_too_small_measures_nothing_and_caches_nothing(tmp_path):
    rgb_model(tmp_path / "rgb")
    # less than even one pool's least share (a skipped pool's share passes to the next one)
    budget = (STOP_RESERVE + 3 * ROUNDS * MIN_PHASE) * 0.9
    choice = asyncio.run(_tuner(tmp_path / "rgb", tmp_path / "cache", budget).choose())
    assert choice.layout == Layout(1, 0, 8)  # modelhost's defaults
    assert set(choice.sources.values()) == {"default"}
    assert choice.note == "nothing could be measured"
    assert choice.phases == ()  # no pool was even started
    assert {m.skipped for m in choice.measurements} == {"out of budget"}
    assert not (tmp_path / "cache" / "tuning").exists()


def test_a_layout_that_fails_to_start_is_skipped_with_its_reason(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    choice = asyncio.run(_tuner(folder, tmp_path / "cache", budget=10.0).choose())
    assert set(choice.sources.values()) == {"default"}
    assert choice.measurements
    assert all(m.skipped.startswith("did not start: model.onnx") for m in choice.measurements)
    assert not (tmp_path / "cache" / "tuning").exists()


@pytest.mark.slow
def test_only_the_open_values_are_measured(tmp_path):
    folder = tmp_path / "rgb"
    rgb_model(folder, toml="[workers]\nthreads = 1\n")
    tuner = _tuner(folder, tmp_path / "cache", budget=8.0, max_batch_size=1)
    tuner.cores = 2
    choice = asyncio.run(tuner.choose())
    assert {(m.layout.threads, m.layout.max_batch_size) for m in choice.measurements} == {(1, 1)}
    assert [m.layout.replicas for m in choice.measurements] == [1, 2]
    assert choice.sources == {"replicas": "measured", "threads": "modelhost.toml",
                              "max_batch_size": "command line"}
    assert (choice.layout.threads, choice.layout.max_batch_size) == (1, 1)


# -- a real server -------------------------------------------------------------------------------

@pytest.mark.slow
def test_server_tunes_at_first_start_and_uses_the_cache_after(tmp_path):
    repo = tmp_path / "repo"
    rgb_model(repo / "free")
    rgb_model(repo / "pinned", toml=PINNED_TOML)
    # 16 s: under a loaded CI machine (load 6) a 10 s budget left 2 s to start a pool, and
    # none started in time (the server then keeps the defaults, which this test rejects)
    args = [str(repo), "--cache-dir", str(tmp_path / "cache"), "--tune-budget", "16"]
    env = {"MODELHOST_TUNE": "1"}

    first = serve_in_process(args, tmp_path, env=env, wait_ready=False)
    try:
        # the port is open while the layout is measured; /readyz says so
        deadline = time.monotonic() + 60
        while (readiness := first.client.get("/readyz").json())["models"]["free"].get(
                "progress", {}).get("stage") != "measuring the layout":
            assert time.monotonic() < deadline and not readiness["ready"], readiness
            time.sleep(0.05)
        assert readiness["models"]["free"]["state"] == "loading"
        wait_until_ready(first)
        free = first.client.get("/api/models/free").json()
        pinned = first.client.get("/api/models/pinned").json()
        log = first.log()
    finally:
        assert first.stop() == 0
    assert set(free["layout_source"].values()) == {"measured"}
    assert free["tuning_seconds"] > 0
    record = json.loads(next((tmp_path / "cache" / "tuning").glob("free-*.json")).read_text())
    assert {k: free["layout"][k] for k in record["layout"]} == record["layout"]
    assert "model free: measuring" in log and "model pinned: measuring" not in log
    assert "model free loaded; layout " in log and "measured in" in log
    # modelhost.toml's values win and are never measured
    assert set(pinned["layout_source"].values()) == {"modelhost.toml"}
    assert pinned["layout"] == {"replicas": 1, "threads": 1, "max_batch_size": 2,
                                "max_delay_ms": 0.0}
    assert pinned["tuning_seconds"] == 0
    assert not list((tmp_path / "cache" / "tuning").glob("pinned-*"))

    second = serve_in_process(args, tmp_path, env=env)
    try:
        again = second.client.get("/api/models/free").json()
        log = second.log()
    finally:
        assert second.stop() == 0
    assert set(again["layout_source"].values()) == {"cache"}
    assert again["layout"] == free["layout"] and again["tuning_seconds"] == 0
    assert "measuring" not in log

    untuned = serve_in_process([*args, "--no-tune"], tmp_path, env=env)
    try:
        default = untuned.client.get("/api/models/free").json()
    finally:
        assert untuned.stop() == 0
    assert set(default["layout_source"].values()) == {"default"}
    assert default["layout"] == {"replicas": 1, "threads": 0, "max_batch_size": 8,
                                 "max_delay_ms": 0.0}
