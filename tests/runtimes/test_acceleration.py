"""Execution providers and INT8, each checked against the CPU provider's FP32 output.

Real runtimes throughout: the imagenet demo (EfficientNet-Lite0) on real photos shipped by
scikit-image and scikit-learn, ONNX Runtime's OpenVINO provider on this machine's CPU (from the
interpreter .ci/run makes: the onnxruntime-openvino build replaces the onnxruntime package, so it
lives in its own environment), the stock CPU provider as the reference, and servers started
with ``modelhost serve`` on 127.0.0.1. No GPU here: the GPU rules that can be checked without
one (refusal, the listed fallback, the reporting, the pinning environment) are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from modelhost.inputs.images import to_tensor
from modelhost.postprocess import probabilities
from modelhost.preprocessing import resolve
from modelhost.repository import load_repository
from modelhost.runtimes.onnx import OnnxRuntime
from modelhost.runtimes.providers import device_env, parse
from modelhost.types import ModelConfig, ProviderSpec, Region

from ..support import LiveServer, start_server, wait_until_ready
from .conftest import expected

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # skimage.data; + sklearn's two
BF16 = 'load_config={"CPU":{"INFERENCE_PRECISION_HINT":"bf16"}}'  # numbers change: refused


# -- fixtures: the demo model, real photos, the OpenVINO interpreter --------------------------


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    """The imagenet demo converted once (torch → ONNX, 8 s) into a folder of this module."""
    out = tmp_path_factory.mktemp("accel") / "imagenet"
    subprocess.run([sys.executable, "-m", "modelhost.demo.imagenet", str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six real photos as JPEG files: a person, a cat, a cup, a rocket, a temple, a flower."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    folder = tmp_path_factory.mktemp("photos")
    arrays = [getattr(skimage.data, name)() for name in PHOTOS] + load_sample_images().images
    for index, array in enumerate(arrays):
        Image.fromarray(array[..., :3]).save(folder / f"photo-{index}.jpg", quality=92)
    return folder


@pytest.fixture(scope="module")
def optimized(imagenet: Path, photos: Path, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the demo after ``modelhost optimize --int8 --samples PHOTOS``, and what the
    command printed (run once: quantising and measuring take ~10 s)."""
    folder = copy_model(imagenet, tmp_path_factory.mktemp("optimized") / "imagenet")
    done = run_cli("optimize", str(folder), "--int8", "--samples", str(photos))
    assert done.returncode == 0, done.stderr
    return folder, done.stdout


@pytest.fixture(scope="module")
def openvino_python() -> str:
    """An interpreter whose ONNX Runtime has the OpenVINO provider: this one, the one named in
    MODELHOST_TEST_OPENVINO_PYTHON, or the one .ci/run makes."""
    probe = ("from modelhost.runtimes.providers import unavailable; "
             "from modelhost.types import ProviderSpec; "
             "import sys; sys.exit(unavailable(ProviderSpec('openvino')) is not None)")
    made = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "modelhost-ci" / "openvino-env" / "bin" / "python"  # where .ci/run makes it
    candidates = (sys.executable, os.environ.get("MODELHOST_TEST_OPENVINO_PYTHON"),
                  str(made) if made.exists() else None)
    for python in filter(None, candidates):
        if subprocess.run([python, "-c", probe], check=False).returncode == 0:
            return python
    pytest.fail("no Python with ONNX Runtime's OpenVINO provider: run .ci/run (it makes one) "
                "or set MODELHOST_TEST_OPENVINO_PYTHON")


def reference(model: Path, folder: Path, images: Path) -> dict[str, np.ndarray]:
    """The CPU provider's probabilities for every photo: plain ONNX Runtime, no modelhost
    session code, on the inputs prepared as the server prepares requests."""
    spec = load_repository(folder)[0]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    prep = resolve(spec.config, OnnxRuntime(model).info)
    name = session.get_inputs()[0].name
    out = {}
    for path in sorted(images.glob("*.jpg")):
        row = to_tensor(path.read_bytes(), prep, Region(), 50_000_000)[None]
        out[path.name] = probabilities(session.run(None, {name: row})[0].reshape(-1), "logits")
    return out


def served(server: LiveServer, images: Path) -> dict[str, np.ndarray]:
    """The server's probabilities for every class of every photo."""
    out = {}
    for path in sorted(images.glob("*.jpg")):
        response = server.client.post("/api/models/imagenet/predict", params={"top_k": 1000},
                                      files={"image": (path.name, path.read_bytes())})
        assert response.status_code == 200, response.text
        scores = {p["index"]: p["score"] for p in response.json()["predictions"]}
        out[path.name] = np.asarray([scores[i] for i in range(1000)])
    return out


def serve_with(python: str, args: list[str], tmp: Path) -> LiveServer:
    """``modelhost serve`` under another interpreter (the OpenVINO one)."""
    import httpx

    log_path = tmp / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [python, "-m", "modelhost.cli", "serve", *args, "--port", "0",
             "--no-log-predictions"], stdout=subprocess.PIPE, stderr=log, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("modelhost serving on "), log_path.read_text()
    url = line.split()[-1]
    server = LiveServer(url, process, log_path, httpx.Client(base_url=url, timeout=60))
    wait_until_ready(server, 120)
    return server


def run_cli(*args: str, python: str = sys.executable,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "modelhost.cli", *args], capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, **(env or {})})


def copy_model(imagenet: Path, target: Path, toml_extra: str = "") -> Path:
    target.mkdir(parents=True)
    for name in ("model.onnx", "labels.txt"):
        shutil.copy(imagenet / name, target / name)
    (target / "modelhost.toml").write_text((imagenet / "modelhost.toml").read_text() + toml_extra)
    return target


# -- the rules, without loading anything ---------------------------------------------------------


def test_provider_lists_parse_with_options_and_json_values() -> None:
    chain = parse(f"openvino:device_type=CPU:{BF16},cpu")
    assert chain == (ProviderSpec("openvino", (("device_type", "CPU"),
                                               ("load_config", BF16.split("=", 1)[1]))),
                     ProviderSpec("cpu"))
    with pytest.raises(ValueError, match="unknown provider 'gpu'"):
        parse("gpu,cpu")
    with pytest.raises(ValueError, match="not key=value"):
        parse("cuda:device_id")


def test_runtime_section_of_modelhost_toml(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(Path(__file__).parents[2] / "src/modelhost/demo/digits/model.onnx", folder)
    (folder / "modelhost.toml").write_text(
        '[runtime]\nproviders = [{name = "cuda", device_id = 0}, "cpu"]\ntolerance = 1e-4\n'
        'precision = "int8"\nreplicas_per_gpu = 2\ngpu_memory_mb = 2048\n')
    config = load_repository(folder)[0].config
    assert config.providers == (ProviderSpec("cuda", (("device_id", "0"),)), ProviderSpec("cpu"))
    assert (config.tolerance, config.precision, config.replicas_per_gpu,
            config.gpu_memory_mb) == (1e-4, "int8", 2, 2048)


def test_an_int8_copy_beside_the_model_is_not_taken_for_a_second_model(tmp_path: Path) -> None:
    folder = tmp_path / "cats"
    folder.mkdir()
    digits = Path(__file__).parents[2] / "src/modelhost/demo/digits/model.onnx"
    shutil.copy(digits, folder / "cats.onnx")
    shutil.copy(digits, folder / "cats.int8.onnx")
    assert load_repository(folder)[0].path == folder / "cats.onnx"


def test_each_replica_is_pinned_to_one_gpu_only_with_a_gpu_provider() -> None:
    gpu = ModelConfig(providers=parse("cuda,cpu"), replicas_per_gpu=2)
    assert [device_env(slot, gpu) for slot in range(4)] == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    assert device_env(3, ModelConfig(providers=parse("openvino,cpu"))) == {}


# -- CUDA here: refused in one line, or the listed CPU fallback, reported ------------------------


def test_cuda_without_a_gpu_stops_the_start_with_one_line(imagenet: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelhost.cli", "serve", str(imagenet), "--providers", "cuda",
         "--port", "0", "--no-log-predictions"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    errors = [json.loads(line) for line in done.stderr.splitlines()
              if line.startswith("{") and '"level":"error"' in line]
    assert len(errors) == 1, done.stderr
    message = errors[0]["msg"]
    assert "cuda: not available in ONNX Runtime" in message
    assert 'pip install "modelhost[gpu]"' in message and "\n" not in message


@pytest.mark.slow
def test_cuda_then_cpu_serves_int8_on_the_cpu_and_says_so(
        imagenet: Path, photos: Path, optimized: tuple[Path, str], tmp_path: Path) -> None:
    folder = copy_model(imagenet, tmp_path / "imagenet",
                        '\n[runtime]\nproviders = ["cuda", "cpu"]\nprecision = "int8"\n')
    refused = start_server_failing(folder, tmp_path)
    assert 'precision = "int8" but optimize.json is missing' in refused
    for name in ("model.int8.onnx", "optimize.json"):  # what `optimize` wrote (test below)
        shutil.copy(optimized[0] / name, folder / name)
    server = start_server([str(folder), "--no-log-predictions"], tmp_path)
    try:
        model = server.client.get("/api/models/imagenet").json()
        assert model["precision"] == "int8"
        assert [w["provider"] for w in model["providers"]] == ["cpu", "cpu"]
        assert all("cuda: not available" in w["note"] and w["note"].endswith("serving on cpu")
                   for w in model["providers"])
        assert "INT8 (static QDQ" in model["runtime"]
        metrics = server.client.get("/metrics").text
        assert ('modelhost_model_info{format="onnx",model="imagenet",precision="int8",'
                'providers="cpu",version="1"} 1.0') in metrics
        log = server.wait_for_log('"level":"warning"').splitlines()
        assert [line for line in log if '"level":"warning"' in line
                and "model imagenet: cuda: not available" in line and "serving on cpu" in line]
        loaded = next(json.loads(line) for line in log if "model imagenet loaded" in line)
        assert loaded["providers"] == ["cpu", "cpu"] and loaded["precision"] == "int8"
        # the INT8 file serves: the scores are its own, and its top-1 is the FP32 model's
        got = served(server, photos)
        int8 = reference(folder / "model.int8.onnx", folder, photos)
        fp32 = reference(folder / "model.onnx", folder, photos)
        for name, probs in got.items():
            assert np.max(np.abs(probs - int8[name])) <= 2e-6, name
            assert int(probs.argmax()) == int(fp32[name].argmax()), name
        out = tmp_path / "bench.json"
        done = run_cli("bench", server.url, str(photos / "photo-2.jpg"), "--model", "imagenet",
                       "-c", "1", "--duration", "0.5", "--warmup", "0", "--json", str(out))
        assert done.returncode == 0, done.stderr
        assert "imagenet: int8 on cpu, cpu" in done.stdout
        served_as = json.loads(out.read_text())["served"]
        assert [w["provider"] for w in served_as["providers"]] == ["cpu", "cpu"]
    finally:
        assert server.stop() == 0


def start_server_failing(folder: Path, tmp_path: Path) -> str:
    """The one-line refusal of ``serve`` (exit 2) for a model it cannot serve as configured."""
    done = run_cli("serve", str(folder), "--port", "0", "--no-log-predictions")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr


NVIDIA = Path("/proc/driver/nvidia/gpus")  # the kernel driver's list: a GPU is present


@pytest.mark.skipif(not (NVIDIA.is_dir() and any(NVIDIA.iterdir())),
                    reason="no NVIDIA GPU on this machine (the CPU-side rules are tested above)")
def test_cuda_serves_the_cpu_answers_on_the_gpu(imagenet: Path, photos: Path,
                                                tmp_path: Path) -> None:
    """Runs only where a GPU exists; there a missing onnxruntime-gpu fails it, by design."""
    folder = copy_model(imagenet, tmp_path / "imagenet",
                        "\n[runtime]\nproviders = [\"cuda\"]\ngpu_memory_mb = 1024\n")
    server = start_server([str(folder), "--replicas", "1", "--no-log-predictions"], tmp_path)
    try:
        workers = server.client.get("/api/models/imagenet").json()["providers"]
        assert [w["provider"] for w in workers] == ["cuda"]
        assert "GPU 0, device memory cap 1024 MiB" in workers[0]["note"]
        got, cpu = served(server, photos), reference(folder / "model.onnx", folder, photos)
        for name, probs in got.items():
            assert int(probs.argmax()) == int(cpu[name].argmax()), name
            assert np.max(np.abs(probs - cpu[name])) <= 1e-3, name
    finally:
        assert server.stop() == 0


# -- OpenVINO on this CPU ------------------------------------------------------------------------


def test_openvino_serves_the_cpu_answers_and_reports_itself(
        imagenet: Path, photos: Path, tmp_path: Path, openvino_python: str) -> None:
    folder = copy_model(imagenet, tmp_path / "imagenet")
    shutil.copytree(photos, folder / "samples")  # real photos verify the provider too
    server = serve_with(openvino_python, [str(folder), "--providers", "openvino"], tmp_path)
    try:
        model = server.client.get("/api/models/imagenet").json()
        assert [w["provider"] for w in model["providers"]] == ["openvino", "openvino"]
        note = model["providers"][0]["note"]
        assert "verified against the CPU provider on 14 inputs" in note, note
        assert "top-1 differs on 0" in note
        assert 'providers="openvino"' in server.client.get("/metrics").text
        got, cpu = served(server, photos), reference(folder / "model.onnx", folder, photos)
        for name, probs in got.items():
            assert int(probs.argmax()) == int(cpu[name].argmax()), name
            assert np.max(np.abs(probs - cpu[name])) <= 1e-3, name
        assert '"providers":["openvino","openvino"]' in server.log()
    finally:
        server.process.terminate()
        assert server.process.wait(30) == 0


def test_openvino_with_numbers_changing_option_is_refused_with_the_difference(
        imagenet: Path, photos: Path, openvino_python: str) -> None:
    done = run_cli("predict", str(imagenet), str(photos / "photo-0.jpg"),
                   "--providers", f"openvino:{BF16}", python=openvino_python)
    assert done.returncode == 2
    text = " ".join(done.stderr.replace("│", " ").split())
    assert "differs from the CPU provider on 8 inputs, max |Δp|" in text, text
    assert "(tolerance 0.001); refused" in text


def test_refused_openvino_falls_back_to_a_listed_cpu(imagenet: Path, openvino_python: str) -> None:
    done = run_cli("inspect", str(imagenet), "--providers", f"openvino:{BF16},cpu",
                   python=openvino_python)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.replace("│", " ").split())
    assert "provider: cpu (openvino:" in text
    assert "refused; serving on cpu)" in text


# -- INT8 ------------------------------------------------------------------------------------


def test_optimize_int8_measures_agreement_and_speed_and_records_them(
        optimized: tuple[Path, str], photos: Path) -> None:
    folder, printed = optimized
    record = json.loads((folder / "optimize.json").read_text())
    assert record["passed"] and record["samples"] == 6
    assert record["top1_agreement"] >= 0.99
    assert record["int8_file"] == "model.int8.onnx"
    assert [s["batch"] for s in record["speed"]] == [1]  # the demo's max_batch_size is 1
    assert record["speed"][0]["speedup"] > 0
    # recomputed here with plain ONNX Runtime sessions, not the command's own numbers
    fp32 = reference(folder / "model.onnx", folder, photos)
    int8 = reference(folder / "model.int8.onnx", folder, photos)
    assert all(fp32[n].argmax() == int8[n].argmax() for n in fp32)
    worst = max(float(np.max(np.abs(fp32[n] - int8[n]))) for n in fp32)
    assert worst == pytest.approx(record["max_dp"], rel=1e-4)
    assert "top-1 agreement with FP32" in printed


def test_optimize_refuses_below_the_threshold_and_writes_nothing(
        imagenet: Path, photos: Path, tmp_path: Path) -> None:
    folder = copy_model(imagenet, tmp_path / "imagenet")
    done = run_cli("optimize", str(folder), "--int8", "--samples", str(photos),
                   "--min-agreement", "1.01")
    assert done.returncode == 1
    assert "refused: top-1 agreement 1.000 is below --min-agreement 1.01; nothing written" \
        in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["labels.txt", "model.onnx",
                                                        "modelhost.toml"]


def test_optimize_without_samples_quantises_dynamically(tmp_path: Path) -> None:
    """No samples to calibrate on: dynamic INT8 of the dense layer, measured on the generated
    images, batch 1 and the model's max_batch_size (32) both timed."""
    folder = shutil.copytree(Path(__file__).parents[2] / "src/modelhost/demo/digits",
                             tmp_path / "digits")
    done = run_cli("optimize", str(folder), "--int8")
    assert done.returncode == 0, done.stderr
    record = json.loads((folder / "optimize.json").read_text())
    assert record["method"].startswith("dynamic, MatMul/Gemm weights")
    assert record["samples"] == 8 and record["top1_agreement"] == 1.0
    assert [s["batch"] for s in record["speed"]] == [1, 32]
    assert 0 < record["max_dp"] < 0.05


def test_int8_record_for_other_bytes_is_refused(imagenet: Path, photos: Path,
                                                tmp_path: Path) -> None:
    folder = copy_model(imagenet, tmp_path / "imagenet", '\n[runtime]\nprecision = "int8"\n')
    (folder / "optimize.json").write_text(json.dumps({"fp32_sha256": "0" * 64, "passed": True}))
    assert "made for another version of the model" in start_server_failing(folder, tmp_path)


@pytest.mark.slow
def test_optimize_int8_on_a_keras_model_and_predict_with_it(
        built: Path, cache_dir: Path, tmp_path: Path) -> None:
    """A Keras model (trained on scikit-learn's scanned digits) is converted to ONNX, quantised
    with calibration on 30 real digits, and then answers with the INT8 file."""
    folder = shutil.copytree(built / "repo" / "digits_keras", tmp_path / "digits")
    samples = tmp_path / "samples"
    samples.mkdir()
    for image in sorted((built / "images").glob("digit-*.png")):
        shutil.copy(image, samples)
    env = {"MODELHOST_CACHE_DIR": str(cache_dir)}
    done = run_cli("optimize", str(folder), "--int8", "--samples", str(samples), env=env)
    assert done.returncode == 0, done.stderr
    record = json.loads((folder / "optimize.json").read_text())
    assert record["samples"] == 30 and record["top1_agreement"] >= 0.99
    assert "calibrated on 30 samples" in record["method"]
    images = sorted(samples.iterdir())[:3]  # more would draw a progress bar on stdout
    done = run_cli("predict", str(folder), *map(str, images), "--json", "--top-k", "10",
                   "--precision", "int8", env=env)
    assert done.returncode == 0, done.stderr
    keras = {name: row for name, row in expected(built, "digits_keras").items()}
    int8 = Path(folder / record["int8_file"])
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    spec = load_repository(folder)[0]
    prep = resolve(spec.config, OnnxRuntime(int8).info)
    for line, image in zip(done.stdout.splitlines(), images, strict=True):
        top = json.loads(line)["predictions"]
        row = to_tensor(image.read_bytes(), prep, Region(), 50_000_000)[None]
        own = probabilities(session.run(None, {session.get_inputs()[0].name: row})[0]
                            .reshape(-1), spec.config.output_kind)
        assert top[0]["index"] == int(keras[image.name].argmax()), image.name
        assert top[0]["score"] == pytest.approx(float(own.max()), abs=2e-6), image.name


def test_acceleration_of_a_model_served_by_its_framework_is_refused(built: Path) -> None:
    done = run_cli("serve", str(built / "repo" / "digits_keras"), "--runtime", "native",
                   "--providers", "openvino,cpu", "--port", "0", "--no-log-predictions")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "modelhost: digits_keras: providers openvino,cpu needs an ONNX model; this one runs on "
        "keras runtime (--runtime native) (convert it: --runtime auto or onnx)"]
