"""One vocabulary table per concept (types.py): everything that lists a concept's words
derives them from its table."""

from __future__ import annotations

import importlib

import pytest
from typer.testing import CliRunner

from modelhost.cli import app
from modelhost.repository import MODEL_SUFFIXES, RepositoryError, read_config
from modelhost.runtimes.base import _RUNTIMES, ArrayRuntime
from modelhost.settings import Settings
from modelhost.types import FORMATS, LAYOUTS, RESAMPLES, SCALINGS


def test_every_format_has_a_runtime_and_every_suffix_a_format():
    assert set(_RUNTIMES) == set(FORMATS)
    assert set(MODEL_SUFFIXES.values()) <= set(FORMATS)


def test_settings_and_cli_help_list_the_formats():
    assert all(f in Settings.model_fields["format"].description for f in FORMATS)
    help_text = " ".join(CliRunner().invoke(app, ["serve", "--help"],
                                            terminal_width=400).output.split())
    assert "tf_savedmodel" in help_text and "torch_export" in help_text
    with pytest.raises(ValueError, match="format"):
        Settings(format="caffe2")


@pytest.mark.parametrize(("key", "words"), [("layout", LAYOUTS), ("scaling", SCALINGS),
                                            ("resample", RESAMPLES)])
def test_modelhost_toml_accepts_the_table_and_names_it_on_a_typo(tmp_path, key, words):
    config = tmp_path / "modelhost.toml"
    for word in words:
        config.write_text(f'[input]\n{key} = "{word}"\n')
        read_config(config)
    config.write_text(f'[input]\n{key} = "sideways"\n')
    with pytest.raises(RepositoryError) as refused:
        read_config(config)
    assert all(word in str(refused.value) for word in words)


@pytest.mark.parametrize(("module", "name"), [("onnx", "OnnxRuntime"),
                                              ("python", "PipelineRuntime")])
def test_runtimes_declare_what_the_worker_calls(module, name):
    cls = getattr(importlib.import_module(f"modelhost.runtimes.{module}"), name)
    assert callable(cls.predict) and callable(cls.predict_images)
    if issubclass(cls, ArrayRuntime):
        assert cls.takes_images is False
