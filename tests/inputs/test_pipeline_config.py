"""``[input] pipeline`` in modelhost.toml, ``--pipeline``, and ``modelhost inspect --image``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as photos

from modelhost.preprocessing import resolve
from modelhost.repository import RepositoryError, load_repository, read_config
from modelhost.types import ModelConfig, ModelInfo, TensorSpec

from ..support import rgb_model

INFO = ModelInfo((TensorSpec("image", "float32", (-1, 3, 224, 224)),), ())


def _config(tmp_path: Path, text: str) -> ModelConfig:
    path = tmp_path / "modelhost.toml"
    path.write_text(text)
    return read_config(path)


@pytest.mark.parametrize(("text", "message"), [
    ('[input]\npipeline = "opencv"',
     "input.pipeline = 'opencv': expected one of ['torchvision', 'keras', 'keras-dataset', "
     "'tf', 'pillow']"),
    ('[input]\npipeline = "keras"\nresize = 256',
     'input.resize applies only with pipeline = "torchvision" or no pipeline (not \'keras\')'),
    ('[input]\npipeline = "torchvision"\nantialias = true',
     'input.antialias applies only with pipeline = "tf" (not \'torchvision\')'),
    ('[input]\npipeline = "tf"\nresample = "hamming"',
     "input.resample = 'hamming': the tf pipeline's interpolations are ['bilinear', "
     "'nearest', 'bicubic', 'area', 'lanczos3', 'lanczos5', 'gaussian', 'mitchellcubic']"),
    ('[input]\nresample = "area"', "input.resample = 'area': the default pipeline's"),
    ('[input]\npipeline = "tf"\ncentral_crop = 1.5',
     "input.central_crop = 1.5: expected a fraction in (0, 1]"),
    ('[input]\ndecode = "draft"', "input.decode = 'draft': expected one of ['exact', 'fast']"),
    ('[input]\npipeline = "keras"\ncrop_to_aspect_ratio = true',
     'input.crop_to_aspect_ratio applies only with pipeline = "keras-dataset"'),
])
def test_bad_pipeline_settings_name_the_file_and_key(tmp_path, text, message):
    with pytest.raises(RepositoryError) as caught:
        _config(tmp_path, text)
    assert str(caught.value).startswith(f"{tmp_path / 'modelhost.toml'}: ")
    assert message in str(caught.value)


def test_each_pipeline_defaults_to_its_librarys_interpolation(tmp_path):
    defaults = {"torchvision": "bilinear", "keras": "nearest", "pillow": "bicubic",
                "tf": "bilinear", "keras-dataset": "bilinear"}
    for name, interpolation in defaults.items():
        prep = resolve(_config(tmp_path, f'[input]\npipeline = "{name}"'), INFO)
        assert (prep.pipeline, prep.resample, prep.decode) == (name, interpolation, "exact")
    prep = resolve(ModelConfig(), INFO)  # no configuration: modelhost's documented default
    assert (prep.pipeline, prep.resample, prep.resize, prep.decode) == ("", "bilinear", 0,
                                                                         "exact")
    keras = resolve(_config(tmp_path, '[input]\npipeline = "keras"\nkeep_aspect_ratio = true\n'
                                      'decode = "fast"'), INFO)
    assert keras.aspect_crop and keras.decode == "fast"


def test_command_line_pipeline_fills_in_only_where_the_file_is_silent(tmp_path):
    rgb_model(tmp_path / "plain")
    rgb_model(tmp_path / "named", toml='[input]\npipeline = "keras"\n')
    specs = {s.name: s for s in load_repository(tmp_path, pipeline="torchvision")}
    assert specs["plain"].config.pipeline == "torchvision"
    assert specs["named"].config.pipeline == "keras"
    rgb_model(tmp_path / "resized", toml="[input]\nresize = 256\n")
    with pytest.raises(RepositoryError, match="resize applies only with the torchvision"):
        load_repository(tmp_path / "resized", pipeline="pillow")


def test_inspect_image_prints_the_tensor_and_the_difference_from_torchvision(tmp_path):
    rgb_model(tmp_path / "m", size=224, toml='[input]\npipeline = "torchvision"\nresize = 256\n'
                                             'resample = "bicubic"\nscaling = "torch"\n')
    photo = tmp_path / "coffee.jpg"
    Image.fromarray(photos.coffee()).save(photo, quality=90)
    done = subprocess.run([sys.executable, "-m", "modelhost.cli", "inspect", str(tmp_path / "m"),
                           "--image", str(photo)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin",
                               **{k: v for k, v in __import__("os").environ.items()
                                  if k.startswith(("PYTHON", "HOME"))}})
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "torchvision Resize(256) + CenterCrop, bicubic, full decode (exact)" in out
    assert "coffee.jpg → tensor [3, 224, 224] float32" in out
    assert re.search(r"max \|Δ\| against torchvision \S+'s own pipeline .*: 0\n", out), out
    from torchvision import transforms  # the printed statistics, from torchvision itself

    pixels = transforms.Compose([transforms.Resize(256, transforms.InterpolationMode.BICUBIC),
                                 transforms.CenterCrop(224)])(Image.open(photo).convert("RGB"))
    red = (np.asarray(pixels, np.float32)[:, :, 0] / 255 - 0.485) / 0.229
    row = re.search(r"│ R\s+│ (\S+)\s+│ (\S+)\s+│ (\S+)", out)
    assert row is not None, out
    np.testing.assert_allclose([float(v) for v in row.groups()],
                               [red.min(), red.max(), red.mean()], rtol=1e-5)
