"""Traffic split between two real versions: a 70/30 split over 1,000 requests lands within a
binomial tolerance, sticky routing keeps each client (address, or API key name) on one version,
and a request naming a version is never split."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from scipy.stats import binomtest

from modelhost.predictor import Call
from modelhost.routing import choose
from modelhost.types import VersionPolicy

from ..support import serve_in_process, two_versions

SPLIT = '[versions]\nserve = "all"\nsplit = {"1" = 70, "2" = 30}\n'
STICKY = '[versions]\nserve = "all"\nsplit = {"1" = 50, "2" = 50}\nsticky = true\n'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("split")
    two_versions(tmp / "repo" / "split", SPLIT)  # version 2 answers red with index 1
    two_versions(tmp / "repo" / "sticky", STICKY)
    live = serve_in_process([str(tmp / "repo")], tmp)
    yield live
    assert live.stop() == 0


def red() -> dict:
    row = np.zeros((1, 3, 9, 9), np.float32)
    row[0, 0] = 1.0
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 9, 9],
                        "data": row.flatten().tolist()}]}


def answered_by(response) -> str:
    """The version that answered, checked against what that version computes."""
    assert response.status_code == 200, response.text
    body = response.json()
    expected = {"1": [10.0, 0.0, 0.0], "2": [0.0, 10.0, 0.0]}[body["model_version"]]
    assert body["outputs"][0]["data"] == expected
    return body["model_version"]


def test_split_70_30_over_1000_requests(server):
    counts = {"1": 0, "2": 0}
    body = red()
    for _ in range(1000):
        counts[answered_by(server.client.post("/v2/models/split/infer", json=body))] += 1
    assert counts["1"] + counts["2"] == 1000
    # two-sided exact binomial test of "version 1 gets 70 %": fails only 1 run in 10,000
    assert binomtest(counts["1"], 1000, 0.7).pvalue > 1e-4, counts
    assert 600 < counts["1"] < 800


def test_named_version_is_never_split(server):
    body = red()
    for _ in range(20):
        assert answered_by(server.client.post("/v2/models/split/versions/2/infer",
                                              json=body)) == "2"


def test_sticky_keeps_each_client_address_on_one_version(server):
    body, seen = red(), {}
    for host in range(2, 42):  # 40 clients, each from its own loopback address
        address = f"127.0.0.{host}"
        transport = httpx.HTTPTransport(local_address=address)
        with httpx.Client(base_url=server.url, transport=transport, timeout=30) as client:
            versions = {answered_by(client.post("/v2/models/sticky/infer", json=body))
                        for _ in range(5)}
        assert len(versions) == 1, (address, versions)
        seen[address] = versions.pop()
    shares = list(seen.values())
    assert {"1", "2"} == set(shares)  # 50/50 over 40 clients: both versions have clients
    assert binomtest(shares.count("1"), 40, 0.5).pvalue > 1e-4


def test_sticky_prefers_the_api_key_name():
    policy = VersionPolicy(served=("1", "2"), default="2", split=(("1", 50), ("2", 50)),
                           sticky=True)
    names = [f"team-{i}" for i in range(200)]
    first = {n: choose(policy, n) for n in names}
    assert all(choose(policy, n) == first[n] for n in names for _ in range(3))
    assert 70 < list(first.values()).count("1") < 130
    call = Call(0.0, "id", client="team-1", peer="127.0.0.9")
    assert call.routing_key == "team-1"
    assert Call(0.0, "id", peer="127.0.0.9").routing_key == "127.0.0.9"
