"""The transport-neutral V2 tensor code, checked against Triton's own client utilities."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from modelhost.errors import InvalidInput
from modelhost.protocols import v2


@pytest.mark.parametrize("dtype", ["bool", "uint8", "uint16", "uint32", "uint64", "int8",
                                   "int16", "int32", "int64", "float16", "float32", "float64"])
def test_binary_round_trip_of_every_numeric_datatype(dtype):
    array = (np.arange(6) % 2 == 0) if dtype == "bool" else np.arange(6).astype(dtype)
    array = array.reshape(2, 3)
    entry, blob = v2.encode_output("y", array, binary=True)
    assert entry["datatype"] == v2.datatype_of(dtype) and entry["shape"] == [2, 3]
    assert entry["parameters"]["binary_data_size"] == len(blob) == array.nbytes
    tensor = v2.from_bytes("y", entry["datatype"], entry["shape"], memoryview(blob))
    np.testing.assert_array_equal(tensor.value, array)


def test_bytes_elements_match_tritons_serialisation():
    elements = np.array([b"a", b"", b"\x00\xffjpeg"], dtype=np.object_)
    blob = serialize_byte_tensor(elements).item()
    tensor = v2.from_bytes("x", "BYTES", [3], memoryview(blob))
    assert tensor.value == [b"a", b"", b"\x00\xffjpeg"]
    _, ours = v2.encode_output("y", np.array(["3.5:1:cat", "x"], dtype=object), binary=True)
    assert list(deserialize_bytes_tensor(ours)) == [b"3.5:1:cat", b"x"]


def test_bf16_is_widened_exactly():
    values = np.array([1.0, -2.5, 0.15625], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    tensor = v2.from_bytes("x", "BF16", [3], memoryview(bits.tobytes()))
    np.testing.assert_array_equal(tensor.value, values)


def test_json_data_nested_or_flat():
    nested = v2.from_json("x", "INT32", [2, 2], [[1, 2], [3, 4]])
    flat = v2.from_json("x", "INT32", [2, 2], [1, 2, 3, 4])
    np.testing.assert_array_equal(nested.value, flat.value)
    assert v2.from_json("x", "BYTES", [2], ["a", {"b64": "Yg=="}]).value == [b"a", b"b"]


@pytest.mark.parametrize(("datatype", "shape", "data", "needle"), [
    ("FP32", [3], [1, 2], "2 elements"),
    ("FP32", [-1], [1], "negative"),
    ("UINT8", [1], [256], "not a UINT8"),
    ("FP32", [1], [{"a": 1}], "not a FP32"),
    ("BYTES", [1], [1], "strings"),
    ("BYTES", [1], [{"b64": "%%"}], "base64"),
    ("STRING", [1], ["a"], "unknown datatype"),
])
def test_bad_json_tensors(datatype, shape, data, needle):
    with pytest.raises(InvalidInput, match=needle):
        v2.from_json("x", datatype, shape, data)


def test_truncated_binary_sections():
    with pytest.raises(InvalidInput, match="expected 12"):
        v2.from_bytes("x", "FP32", [3], memoryview(b"\0" * 8))
    with pytest.raises(InvalidInput, match="truncated"):
        v2.from_bytes("x", "BYTES", [1], memoryview(b"\x09\0\0\0abc"))


def test_classification_strings():
    rows = np.array([[0.1, 3.3, 2.4], [5.0, -1.0, 0.0]], np.float32)
    out = v2.classify(rows, 2, ("a", "b"))
    assert out.tolist() == [["3.300000:1:b", "2.400000:2"], ["5.000000:0:a", "0.000000:2"]]
