"""One request path: every protocol runs the predictor's run step alike.

A native upload, a V2 REST infer (JSON and binary), a V2 gRPC infer and a TF Serving predict
each produce one log line with durations and one stored prediction whose id the client gets
back, feedback is accepted on that id, and each refuses a quarantined input and NaN scores the
same way. The server runs in this process (``serve_in_process``: uvicorn in a thread on a
loopback port, gRPC beside it) over a real batcher and real ONNX worker processes; the
clients are real HTTP and gRPC clients.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import onnx
import pytest
from onnx import TensorProto, helper
from sqlalchemy import select

from modelhost.assembly import Core
from modelhost.feedback.schema import predictions
from modelhost.feedback.store import Store
from modelhost.protocols import v2_grpc
from modelhost.workers.pool import digest

from .support import free_port, rgb_model, serve_in_process, solid

BLUE, WHITE, BLACK = (0, 0, 255), (255, 255, 255), (0, 0, 0)


def log_model(folder: Path) -> None:
    """A real ONNX model whose scores are log(mean of each channel): finite for a white image,
    -inf or NaN for a black one (whatever the scaling preset), so every protocol can send an
    input the model turns into non-finite scores."""
    folder.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
         helper.make_node("Log", ["mean"], ["logits"])],
        "log", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 9, 9])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    (folder / "labels.txt").write_text("red\ngreen\nblue\n")


@dataclass
class Served:
    http: httpx.Client
    infer: Callable  # the ModelInfer rpc on a real gRPC channel
    core: Core
    db: str


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("one_path")
    rgb_model(tmp / "models" / "rgb")
    log_model(tmp / "models" / "logs")
    db = f"sqlite:///{tmp / 'log.db'}"
    grpc_port = free_port()
    server = serve_in_process(
        [str(tmp / "models"), "--grpc-port", str(grpc_port), "--db", db,
         "--cache-dir", str(tmp / "cache"), "--journal-dir", str(tmp / "journal"),
         "--max-body", str(20 * 2**20), "--replicas", "1"], tmp)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield Served(server.client, v2_grpc.method(channel, "ModelInfer"), server.core, db)
    assert server.stop() == 0


# -- one call per protocol: (ids the client got back) ------------------------------------------

def native(s: Served, model: str, image: bytes) -> list[str]:
    r = s.http.post(f"/api/models/{model}/predict", files={"image": ("i.png", image)})
    r.raise_for_status()
    assert r.headers["x-prediction-id"] == r.json()["id"]
    return [r.json()["id"]]


def v2_json(s: Served, model: str, image: bytes) -> list[str]:
    r = s.http.post(f"/v2/models/{model}/infer", json={"inputs": [{
        "name": "image", "shape": [1], "datatype": "BYTES",
        "data": [{"b64": base64.b64encode(image).decode()}]}]})
    r.raise_for_status()
    return _v2_ids(r)


def v2_binary(s: Served, model: str, image: bytes) -> list[str]:
    blob = len(image).to_bytes(4, "little") + image  # one BYTES element, Triton's framing
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}]}).encode()
    r = s.http.post(f"/v2/models/{model}/infer", content=header + blob,
                    headers={"Inference-Header-Content-Length": str(len(header)),
                             "content-type": "application/octet-stream"})
    r.raise_for_status()
    return _v2_ids(r)


def v2_over_grpc(s: Served, model: str, image: bytes) -> list[str]:
    pb = v2_grpc.messages()
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents \
        .append(image)
    response = s.infer(request, timeout=30)
    assert response.outputs[0].name == "logits" and len(response.raw_output_contents) == 1
    return response.parameters["prediction_id"].string_param.split(",")


def tf_serving(s: Served, model: str, image: bytes) -> list[str]:
    r = s.http.post(f"/v1/models/{model}:predict",
                    json={"instances": [{"b64": base64.b64encode(image).decode()}]})
    r.raise_for_status()
    return r.headers["x-prediction-id"].split(",")


def _v2_ids(r: httpx.Response) -> list[str]:
    head = r.content[:int(r.headers.get("inference-header-content-length", len(r.content)))]
    ids = json.loads(head)["parameters"]["prediction_id"]
    assert r.headers["x-prediction-id"] == ids
    return ids.split(",")


PROTOCOLS: dict[str, Callable[[Served, str, bytes], list[str]]] = {
    "native": native, "v2_json": v2_json, "v2_binary": v2_binary, "v2_grpc": v2_over_grpc,
    "tf_serving": tf_serving,
}


def _lines(caplog, ids: list[str]) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "modelhost.predictions"
            and getattr(r, "fields", {}).get("prediction_id") in ids]


def _stored(db: str, prediction_id: str) -> dict:
    store = Store(db)
    try:
        until = time.monotonic() + 15  # the journal flushes to the database every second or so
        while (row := store.prediction(prediction_id)) is None and time.monotonic() < until:
            time.sleep(0.2)
    finally:
        store.close()
    assert row is not None, f"prediction {prediction_id} never reached the database"
    return row


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_logs_records_and_returns_an_id_feedback_accepts(served, protocol,
                                                                         caplog):
    caplog.set_level(logging.INFO, logger="modelhost.predictions")
    ids = PROTOCOLS[protocol](served, "rgb", solid(BLUE))
    assert len(ids) == 1 and len(ids[0]) == 32

    [line] = _lines(caplog, ids)  # one log line, with where the time went
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["model"] == "rgb" and fields["status"] == 200 and fields["top1"] == "blue"
    assert set(fields["durations_ms"]) >= {"decode", "queue", "inference", "total"}
    assert fields["durations_ms"]["total"] > 0 and fields["durations_ms"]["inference"] > 0

    row = _stored(served.db, ids[0])  # one stored prediction
    assert row["model"] == "rgb"

    feedback = served.http.post(f"/api/predictions/{ids[0]}/feedback", json={"label": "blue"})
    assert feedback.status_code in (200, 202), feedback.text
    assert feedback.json()["prediction_id"] == ids[0] and feedback.json()["correct"] is True


def _bench_client(s: Served) -> Served:
    """The same server, every request marked as load-test traffic the way ``modelhost bench``
    marks it (an HTTP header; on gRPC the same key as metadata)."""
    mark = {"x-modelhost-bench": "1"}
    http = httpx.Client(base_url=s.http.base_url, timeout=30, headers=mark)
    return Served(http, functools.partial(s.infer, metadata=tuple(mark.items())), s.core, s.db)


def _bench_flag(db: str, prediction_id: str) -> bool:
    _stored(db, prediction_id)  # wait for the journal to reach the database
    store = Store(db)
    try:
        with store.engine.connect() as conn:
            return bool(conn.execute(select(predictions.c.bench).where(
                predictions.c.id == prediction_id)).scalar_one())
    finally:
        store.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_stores_load_test_traffic_marked(served, protocol):
    bench = _bench_client(served)
    try:
        [marked] = PROTOCOLS[protocol](bench, "rgb", solid(BLUE))
    finally:
        bench.http.close()
    [plain] = PROTOCOLS[protocol](served, "rgb", solid(BLUE))
    assert _bench_flag(served.db, marked) is True
    assert _bench_flag(served.db, plain) is False


def test_decode_and_request_histograms_count_the_same_predictions(served):
    before = _counts(served)
    for call in PROTOCOLS.values():
        call(served, "rgb", solid(BLUE))
    after = _counts(served)
    assert after["modelhost_decode_seconds_count"] - before["modelhost_decode_seconds_count"] \
        == after["modelhost_request_seconds_count"] - before["modelhost_request_seconds_count"] \
        == len(PROTOCOLS)


def _counts(s: Served) -> dict[str, float]:
    text = s.http.get("/metrics").text
    return {name: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            for name in ("modelhost_decode_seconds_count", "modelhost_request_seconds_count")
            if line.startswith(f'{name}{{model="rgb"}}')}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_refuses_non_finite_scores(served, protocol, caplog):
    caplog.set_level(logging.INFO, logger="modelhost.predictions")
    assert PROTOCOLS[protocol](served, "logs", solid(WHITE))  # finite: served
    with pytest.raises(Exception) as refused:
        PROTOCOLS[protocol](served, "logs", solid(BLACK))
    _assert_refusal(refused.value, 500, "model_failed", "NaN or infinite")
    failed = [r for r in caplog.records if r.getMessage() == "prediction failed"]
    assert failed and failed[-1].fields["code"] == "model_failed"  # type: ignore[attr-defined]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_refuses_a_quarantined_input(served, protocol):
    image = solid((10, 20, 230))
    pool = served.core.registry.models["rgb"].pool
    pool.quarantined.add(digest(image))  # as if this input had killed two workers
    try:
        with pytest.raises(Exception) as refused:
            PROTOCOLS[protocol](served, "rgb", image)
    finally:
        pool.quarantined.discard(digest(image))
    _assert_refusal(refused.value, 422, "input_quarantined", "stopped the model's workers")
    assert PROTOCOLS[protocol](served, "rgb", image)  # and served again once released


def _assert_refusal(exc: BaseException, status: int, code: str, text: str) -> None:
    """The same failure, in each transport's dialect."""
    if isinstance(exc, httpx.HTTPStatusError):
        r = exc.response
        if r.url.path.startswith("/api/"):
            assert r.status_code == status
            assert r.json()["error"]["code"] == code and text in r.json()["error"]["message"]
        else:  # V2 and TF Serving: {"error": "<message>"}, 422 folded into 400
            assert r.status_code == (400 if status == 422 else status)
            assert r.headers["x-error-code"] == code and text in r.json()["error"]
        return
    assert isinstance(exc, grpc.RpcError), exc
    assert text in exc.details()
    assert exc.code() == (grpc.StatusCode.INVALID_ARGUMENT if status == 422
                          else grpc.StatusCode.INTERNAL)


# -- the same error dialect whether the body was declared or streamed -----------------------------

@pytest.mark.parametrize(("path", "dialect"), [("/v2/models/rgb/infer", "protocol"),
                                               ("/v1/models/rgb:predict", "protocol"),
                                               ("/api/models/rgb/predict", "native")])
def test_an_oversized_body_reads_the_same_declared_or_streamed(served, path, dialect):
    size = 21 * 2**20
    headers = {"content-type": "application/octet-stream", "x-request-id": "same-request"}
    declared = served.http.post(path, content=b"0" * size, headers=headers)

    def chunks() -> Iterator[bytes]:
        for _ in range(size // 2**20):
            yield b"0" * 2**20

    streamed = served.http.post(path, content=chunks(), headers=headers)
    assert "content-length" not in streamed.request.headers
    for response in (declared, streamed):
        assert response.status_code == 413
        if dialect == "protocol":
            assert response.headers["x-error-code"] == "body_too_large"
            assert set(response.json()) == {"error"}
            assert "over 20,971,520 bytes" in response.json()["error"]
        else:
            assert response.json()["error"]["code"] == "body_too_large"
    assert declared.json() == streamed.json()
