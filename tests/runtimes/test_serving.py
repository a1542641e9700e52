"""Each framework's model served over HTTP gives the framework's own answer: converted to ONNX
(``--runtime auto``) and in the framework itself (``--runtime native``)."""

from __future__ import annotations

import pytest

from .conftest import FRAMEWORK_MODELS, assert_matches_framework

SOURCE_FORMAT = {"digits_keras": "keras", "digits_h5": "keras", "mobilenet": "keras",
                 "digits_savedmodel": "tf_savedmodel", "digits_frozen": "tf_frozen",
                 "torch_script": "torchscript", "torch_export": "torch_export"}


@pytest.mark.slow
@pytest.mark.parametrize("model", FRAMEWORK_MODELS)
def test_converted_model_answers_like_the_framework(auto_server, built, model):
    correct = assert_matches_framework(auto_server, built, model)
    if model != "mobilenet":  # trained on digits: the held-out digits are mostly right
        assert correct >= 24, correct
    meta = auto_server.client.get(f"/api/models/{model}").json()
    assert meta["format"] == SOURCE_FORMAT[model]
    assert meta["runtime"].startswith(f"ONNX Runtime, converted from {SOURCE_FORMAT[model]}: "
                                      "verified on 8 inputs")


@pytest.mark.slow
@pytest.mark.parametrize("model", FRAMEWORK_MODELS)
def test_native_runtime_answers_like_the_framework(native_server, built, model):
    assert_matches_framework(native_server, built, model)
    meta = native_server.client.get(f"/api/models/{model}").json()
    assert meta["format"] == SOURCE_FORMAT[model]
    assert meta["runtime"] == f"{SOURCE_FORMAT[model]} runtime (--runtime native)"


@pytest.mark.slow
def test_own_rescaling_layer_means_no_scaling(auto_server, native_server):
    """The digits models hold a Rescaling layer (keras, h5, SavedModel, frozen graph): pixels
    go in as 0–255; the torch model has none and gets the 0–1 default; the MobileNetV2 gets
    the `tf` preset from its modelhost.toml."""
    for server in (auto_server, native_server):
        scaling = {m: server.client.get(f"/api/models/{m}").json()["input"]["scaling"]
                   for m in FRAMEWORK_MODELS}
        assert scaling == {"digits_keras": "none", "digits_h5": "none",
                           "digits_savedmodel": "none", "digits_frozen": "none",
                           "mobilenet": "tf", "torch_script": "unit", "torch_export": "unit"}
