"""API keys and rate limits on the gRPC port: the same keys as HTTP, one budget for both ports,
checked with Triton's own gRPC client against a live server."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from ..support import free_port, serve_in_process, solid, wait_until_ready
from .test_auth import cli_add_key

BURST = 4  # --rate-limit 1/s --burst 4: four calls in any four seconds


@pytest.fixture(scope="module")
def guarded(rgb_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc_guard")
    keys = tmp / "keys.txt"
    secrets = {name: cli_add_key(keys, name) for name in ("alice", "bob", "carol", "dave")}
    port = free_port()
    server = serve_in_process([str(rgb_repo), "--api-keys", str(keys), "--grpc-port", str(port),
                               "--rate-limit", "1/s", "--burst", str(BURST)], tmp)
    with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
        yield server, client, secrets
    assert server.stop() == 0


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def infer(client, headers: dict[str, str]):
    rows = np.zeros((1, 3, 9, 9), np.float32)
    rows[0, 1] = 1
    tensor = triton.InferInput("image", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return client.infer("rgb", [tensor], headers=headers).as_numpy("logits")


def status_of(call) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status()


def test_a_key_is_needed_except_for_health(guarded):
    server, client, secrets = guarded
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    assert status_of(lambda: client.get_model_metadata("rgb")) == "StatusCode.UNAUTHENTICATED"
    assert status_of(lambda: client.get_server_metadata()) == "StatusCode.UNAUTHENTICATED"
    assert status_of(lambda: infer(client, bearer(secrets["alice"] + "x"))) == \
        "StatusCode.UNAUTHENTICATED"
    assert status_of(lambda: infer(client, {"x-api-key": "mh_guess"})) == \
        "StatusCode.UNAUTHENTICATED"
    logits = infer(client, bearer(secrets["alice"]))
    assert logits.argmax() == 1  # green
    assert client.get_model_metadata("rgb", headers={"x-api-key": secrets["bob"]}).name == "rgb"
    log = server.wait_for_log('"protocol":"grpc","reason":"invalid key"')
    assert secrets["alice"] not in log


def test_one_budget_covers_http_and_grpc(guarded):
    server, client, secrets = guarded
    carol = secrets["carol"]
    for _ in range(2):
        answer = server.client.post("/api/models/rgb/predict", content=solid((250, 10, 10)),
                                    headers={"Content-Type": "image/png", **bearer(carol)})
        assert answer.status_code == 200
    for _ in range(BURST - 2):
        assert infer(client, bearer(carol)).argmax() == 1
    with pytest.raises(InferenceServerException) as caught:
        infer(client, bearer(carol))
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "too many requests" in caught.value.message()
    over = server.client.get("/api/models", headers=bearer(carol))
    assert over.status_code == 429  # the HTTP side sees the same spent budget
    assert client.is_server_live()  # probes are never limited
    assert infer(client, bearer(secrets["dave"])).argmax() == 1  # another key, its own budget


def test_protect_ops_closes_the_grpc_probes_too(rgb_repo, tmp_path):
    keys = tmp_path / "keys.txt"
    secret = cli_add_key(keys, "probe")
    port = free_port()
    server = serve_in_process([str(rgb_repo), "--api-keys", str(keys), "--grpc-port", str(port),
                               "--protect-ops"], tmp_path, wait_ready=False)
    try:
        server.client.headers["X-API-Key"] = secret
        wait_until_ready(server)
        with triton.InferenceServerClient(f"127.0.0.1:{port}") as client:
            assert status_of(client.is_server_live) == "StatusCode.UNAUTHENTICATED"
            assert status_of(client.is_server_ready) == "StatusCode.UNAUTHENTICATED"
            assert client.is_server_live(headers=bearer(secret))
            assert client.is_server_ready(headers={"x-api-key": secret})
    finally:
        assert server.stop() == 0
