"""Execution providers: which one runs an ONNX model, whether it is really there, and whether it
gives the CPU's answers before it serves.

ONNX Runtime falls back to its CPU provider without a word when another one fails to start (a
bad option, a missing device, a missing library): it prints a banner, or only a warning, and
runs on the CPU. A server that claims a GPU and runs on the CPU is a lie, so modelhost asks for
each provider alone (``enable_fallback=0``), checks which provider the session actually got, and
verifies its numbers against the CPU provider's FP32 output on sample images. The only fallback
is one the user wrote: a ``cpu`` later in the list; it is reported, never silent.

OpenVINO comes two ways: the ``onnxruntime-openvino`` build (it replaces the ``onnxruntime``
package and has the provider built in) and the ``onnxruntime-ep-openvino`` plugin, which loads
beside the stock ``onnxruntime`` through its plugin-EP interface. Both are understood here.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StartupError
from ..types import ModelConfig, ProviderSpec

ORT_NAMES = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
GPU_PROVIDERS = ("cuda", "tensorrt")
INSTALL = {
    "openvino": 'pip install "modelhost[openvino]" (the OpenVINO plugin, Intel CPUs/GPUs/NPUs) '
                "or, in its own environment, onnxruntime-openvino (any x86-64 CPU)",
    "cuda": 'pip install "modelhost[gpu]" (onnxruntime-gpu) on a machine with an NVIDIA GPU',
    "tensorrt": 'pip install "modelhost[gpu]" (onnxruntime-gpu) and TensorRT on a machine with '
                "an NVIDIA GPU",
}


class ProviderError(StartupError):
    """A requested provider cannot serve this model: not installed, no device, refused its
    options, or gave other answers than the CPU. The message is one line naming which and why."""


def parse(text: str) -> tuple[ProviderSpec, ...]:
    """``--providers``: comma-separated names, each with ``:key=value`` options, e.g.
    ``openvino:device_type=CPU,cpu`` or ``cuda:device_id=0,cpu``; a value may be JSON
    (OpenVINO's ``load_config={"CPU":{...}}``): separators inside braces or quotes are kept."""
    specs = []
    for part in filter(None, (p.strip() for p in _split(text, ","))):
        name, *pairs = _split(part, ":")
        options = []
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"--providers: {pair!r} in {part!r} is not key=value")
            options.append((key.strip(), value.strip()))
        specs.append(checked(name.strip(), options))
    if not specs:
        raise ValueError("--providers: no provider named (choose from cpu, openvino, cuda, "
                         "tensorrt)")
    return tuple(specs)


def _split(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` outside braces, brackets and double quotes."""
    parts: list[str] = []
    current: list[str] = []
    depth, quoted = 0, False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "{[":
            depth += 1
        elif not quoted and char in "}]":
            depth -= 1
        if char == separator and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    return [*parts, "".join(current)]


def from_toml(value: Any) -> tuple[ProviderSpec, ...]:
    """``[runtime] providers``: names, or inline tables ``{name = "openvino", device_type =
    "CPU"}`` whose other keys are the provider's options."""
    if not isinstance(value, list) or not value:
        raise ValueError("expected a list of provider names or {name = ..., option = ...} tables")
    specs = []
    for item in value:
        if isinstance(item, str):
            specs.append(checked(item, []))
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            options = [(k, _option_text(v)) for k, v in item.items() if k != "name"]
            specs.append(checked(item["name"], options))
        else:
            raise ValueError(f"{item!r}: expected a name or a table with a name")
    return tuple(specs)


def _option_text(value: Any) -> str:
    """ONNX Runtime takes every provider option as a string; tables become JSON (OpenVINO's
    ``load_config``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def checked(name: str, options: list[tuple[str, str]]) -> ProviderSpec:
    """A ProviderSpec for a known name; a typo is refused here, not at load in every worker."""
    if name not in ORT_NAMES:
        raise ValueError(f"unknown provider {name!r} (choose from {', '.join(ORT_NAMES)})")
    return ProviderSpec(name, tuple(options))


def fallback_allowed(chain: tuple[ProviderSpec, ...], index: int) -> bool:
    """A later ``cpu`` in the list is the only fallback allowed."""
    return any(p.name == "cpu" for p in chain[index + 1:])


def device_env(slot: int, config: ModelConfig) -> dict[str, str]:
    """The environment that pins worker ``slot`` to one GPU (``replicas_per_gpu`` workers per
    GPU, in order) when a GPU provider is listed; empty otherwise. The server never loads ONNX
    Runtime itself, so it does not count GPUs: a worker pinned past the last one cannot start
    the provider and refuses, naming the GPU it was given."""
    if not any(p.name in GPU_PROVIDERS for p in config.providers):
        return {}
    return {"CUDA_VISIBLE_DEVICES": str(slot // config.replicas_per_gpu)}


def device_note(spec: ProviderSpec, config: ModelConfig) -> str:
    """Which GPU this worker was pinned to and its device memory cap, for a GPU provider."""
    if spec.name not in GPU_PROVIDERS:
        return ""
    cap = f"{config.gpu_memory_mb} MiB" if config.gpu_memory_mb else "the provider's default"
    return f"; GPU {os.environ.get('CUDA_VISIBLE_DEVICES', '0')}, device memory cap {cap}"


# -- is it there? ------------------------------------------------------------------------------


def unavailable(spec: ProviderSpec) -> str | None:
    """Why ``spec`` cannot run here (one line naming it, the reason and what to install), or
    None when it can."""
    import onnxruntime as ort

    if spec.name == "cpu" or ORT_NAMES[spec.name] in ort.get_available_providers():
        return None  # whether it really starts on a device, open_session checks
    if spec.name == "openvino":
        return _plugin_problem()
    return (f"{spec.name}: not available in ONNX Runtime {ort.__version__} here (it has "
            f"{', '.join(ort.get_available_providers())}); install: {INSTALL[spec.name]}")


def _plugin_problem() -> str | None:
    """None when the OpenVINO plugin is installed and offers a device; else why not."""
    import onnxruntime as ort

    devices = _openvino_devices()
    if devices is None:
        return (f"openvino: not available in ONNX Runtime {ort.__version__} here (neither the "
                f"onnxruntime-ep-openvino plugin nor the onnxruntime-openvino build is "
                f"installed); install: {INSTALL['openvino']}")
    if devices:
        return None
    vendors = sorted({d.device.vendor for d in ort.get_ep_devices()}) or ["unknown"]
    return ("openvino: the onnxruntime-ep-openvino plugin is installed but offers no device on "
            f"this machine (its devices' vendor: {', '.join(vendors)}; the plugin targets Intel "
            "CPUs, GPUs and NPUs); install onnxruntime-openvino in its own environment instead")


def _openvino_devices() -> list | None:
    """The plugin's devices (registered once per process), or None without the plugin."""
    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        return None
    import onnxruntime as ort

    name = plugin.get_ep_name()
    if not any(d.ep_name == name for d in ort.get_ep_devices()):
        # registered already by another session of this process, or broken: the device list
        # below then says so
        with contextlib.suppress(Exception):
            ort.register_execution_provider_library("openvino", plugin.get_library_path())
    return [d for d in ort.get_ep_devices() if d.ep_name == name]


def _gpus(spec: ProviderSpec) -> str:
    """For a GPU provider: what the device query found and where this worker is pinned."""
    if spec.name not in GPU_PROVIDERS:
        return ""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES", "all")
    return f"; ONNX Runtime's device query lists {gpu_count()} GPU(s), this worker sees {pinned}"


def gpu_count() -> int:
    """GPUs in ONNX Runtime's own device query (no nvidia-smi): distinct GPU devices that any
    execution provider of this ONNX Runtime is offered."""
    import onnxruntime as ort

    try:
        devices = ort.get_ep_devices()
    except AttributeError:  # ONNX Runtime before 1.22 has no device query
        return 0
    return len({(d.device.vendor_id, d.device.device_id,
                 dict(d.device.metadata).get("pci_bus_id", ""))
                for d in devices if d.device.type == ort.OrtHardwareDeviceType.GPU})


# -- open it -----------------------------------------------------------------------------------


def open_session(path: Path, options, spec: ProviderSpec, gpu_memory_mb: int = 0):
    """An InferenceSession whose first provider is ``spec``, or ProviderError: a session that
    ONNX Runtime quietly moved to the CPU is refused."""
    import onnxruntime as ort

    name = ORT_NAMES[spec.name]
    provider_options = dict(spec.options)
    if spec.name == "openvino" and options.intra_op_num_threads:
        # OpenVINO ignores ONNX Runtime's thread count and takes every core: two such workers
        # on 2 cores served 20 req/s at concurrency 16 where the CPU provider's served 57
        provider_options.setdefault("num_of_threads", str(options.intra_op_num_threads))
    if spec.name == "cuda" and gpu_memory_mb:
        provider_options.setdefault("gpu_mem_limit", str(gpu_memory_mb * 2**20))
    if spec.name == "cpu":
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    plugin = spec.name == "openvino" and name not in ort.get_available_providers()
    try:
        if plugin:
            options.add_provider_for_devices(_plugin_devices(provider_options), provider_options)
            session = ort.InferenceSession(str(path), sess_options=options)
        else:
            # nodes the provider does not take run on the next one: TensorRT's on CUDA
            rest = ["CUDAExecutionProvider"] if spec.name == "tensorrt" else []
            session = ort.InferenceSession(str(path), sess_options=options, enable_fallback=0,
                                           providers=[(name, provider_options), *rest,
                                                      "CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own, untyped, errors
        raise ProviderError(f"{spec}: ONNX Runtime could not start it: {_reason(exc)}") from None
    if session.get_providers()[0] != name:
        raise ProviderError(f"{spec}: ONNX Runtime started {session.get_providers()[0]} instead "
                            "(the device or an option was refused; see its log above)"
                            + _gpus(spec))
    return session


def _plugin_devices(provider_options: dict[str, str]) -> list:
    """The plugin's device for ``device_type`` (CPU unless given; the option is the plugin's
    device choice, not a session option)."""
    wanted = provider_options.pop("device_type", "CPU")
    devices = [d for d in _openvino_devices() or [] if d.ep_metadata.get("ov_device") == wanted]
    if not devices:
        raise ValueError(f"the OpenVINO plugin has no {wanted} device here")
    return devices[:1]


def _reason(exc: BaseException) -> str:
    """ONNX Runtime's message without its C++ source location and signature prefix."""
    text = " ".join(str(exc).split())
    if text.startswith("/"):  # "/path/file.cc:1053 std::shared_ptr<…> f(…) The reason"
        text = text[text.rfind(") ") + 2:]
    text = text[text.rfind("] ") + 2:] if "] " in text else text
    return text[:300] or type(exc).__name__


# -- does it give the CPU's answers? -------------------------------------------------------------


TIE = 1e-5  # a top-1 whose runner-up is this close cannot be ordered: not counted as a flip


@dataclass(frozen=True)
class Agreement:
    """How a candidate's probabilities compare with the reference's on the same inputs."""

    inputs: int
    max_dp: float  # largest |Δp| over every class of every input
    top1_flips: int  # inputs whose top-1 differs (ties in the reference not counted)

    @property
    def top1_agreement(self) -> float:
        return 1.0 - self.top1_flips / self.inputs if self.inputs else 1.0

    def summary(self) -> str:
        return (f"{self.inputs} inputs, max |Δp| {self.max_dp:.2g}, top-1 differs on "
                f"{self.top1_flips}")


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Compare two (inputs × classes) probability arrays."""
    if reference.shape != candidate.shape:
        raise ValueError(f"outputs differ in shape: {reference.shape} vs {candidate.shape}")
    ordered = np.sort(reference, axis=1)
    decidable = ordered[:, -1] - (ordered[:, -2] if reference.shape[1] > 1 else 0) > TIE
    flips = int(np.sum((reference.argmax(1) != candidate.argmax(1)) & decidable))
    return Agreement(len(reference), float(np.max(np.abs(reference - candidate))), flips)
