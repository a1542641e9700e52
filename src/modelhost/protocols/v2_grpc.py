"""The V2 gRPC service definition, compiled from the packaged ``open_inference_grpc.proto``
into a descriptor pool of its own.

Not the process-wide default pool: tritonclient (and any other V2 client library) registers
the same ``inference.*`` names there, and two definitions of one name in a pool are an error;
so a server and such a client can share a process (in-process tests, an application that
embeds both). No generated code is kept in the repository: ``grpc_tools.protoc`` compiles the
file at first use, in a child process: run in a process that has loaded TensorFlow (whose
protobuf runtime differs from grpcio-tools'), the in-process compiler crashed the server with a
segmentation fault (the full test suite, 2026-12-04).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"
_PROTO = Path(__file__).with_name("open_inference_grpc.proto")


@functools.cache
def service() -> Any:
    """The service descriptor, from a pool that holds only this file."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "service.pb"
        done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{_PROTO.parent}",
                               f"--descriptor_set_out={out}", str(_PROTO)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"protoc could not compile {_PROTO.name}: {done.stderr.strip()}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool.FindServiceByName(SERVICE)


@functools.cache
def messages() -> SimpleNamespace:
    """The message classes by name: ``messages().ModelInferRequest`` and so on."""
    file = service().file
    return SimpleNamespace(**{name: message_factory.GetMessageClass(descriptor)
                              for name, descriptor in file.message_types_by_name.items()})


def handler(servicer: object) -> grpc.GenericRpcHandler:
    """Each rpc of the service, answered by ``servicer``'s method of the same name."""
    methods = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_class(method.input_type).FromString,
            response_serializer=_class(method.output_type).SerializeToString)
        for method in service().methods
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


def method(channel: grpc.Channel | grpc.aio.Channel, name: str) -> Callable:
    """A client callable for rpc ``name`` on ``channel`` (for tools and tests)."""
    rpc = service().methods_by_name[name]
    return channel.unary_unary(f"/{SERVICE}/{name}",
                               request_serializer=_class(rpc.input_type).SerializeToString,
                               response_deserializer=_class(rpc.output_type).FromString)


def _class(descriptor: Any) -> Any:  # a generated message class
    return message_factory.GetMessageClass(descriptor)
