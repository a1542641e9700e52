"""Model files and folders → ModelSpec, and modelhost.toml errors that name file and key."""

import pytest

from modelhost.repository import RepositoryError, load_repository

from .support import rgb_model


def test_single_file_with_labels_beside_it(tmp_path):
    path = rgb_model(tmp_path / "cats")
    (spec,) = load_repository(path)
    assert (spec.name, spec.version, spec.format) == ("model", "1", "onnx")
    assert spec.labels == ("red", "green", "blue")


def test_repository_versions_and_config(tmp_path):
    rgb_model(tmp_path / "a", toml='[input]\nscaling = "tf"\nsize = [32, 16]\n[batching]\n'
                                   'max_batch_size = 4\n')
    rgb_model(tmp_path / "b" / "1")
    rgb_model(tmp_path / "b" / "10")
    rgb_model(tmp_path / "b" / "9")
    (tmp_path / "notes").mkdir()
    specs = {s.name: s for s in load_repository(tmp_path)}
    assert set(specs) == {"a", "b"}
    assert specs["a"].config.scaling == "tf" and specs["a"].config.size == (32, 16)
    assert specs["a"].config.max_batch_size == 4
    assert specs["b"].version == "10" and specs["b"].versions == ("1", "9", "10")


@pytest.mark.parametrize(("toml", "message"), [
    ("[input]\nscaling = 'fancy'\n", "input.scaling = 'fancy': expected one of"),
    ("[input]\nsize = [0, 3]\n", "input.size"),
    ("[input]\nsizes = [3, 3]\n", "[input] unknown key 'sizes'"),
    ("[gpu]\nx = 1\n", "unknown section [gpu]"),
    ("[batching]\nmax_batch_size = 0\n", "batching.max_batch_size"),
    ("[input\n", "not valid TOML"),
    ("[input]\nstd = [1, 0, 1]\n", "std must not be zero"),
])
def test_config_errors_name_file_key_and_problem(tmp_path, toml, message):
    rgb_model(tmp_path / "m", toml=toml)
    with pytest.raises(RepositoryError) as caught:
        load_repository(tmp_path / "m")
    assert message in str(caught.value) and "modelhost.toml" in str(caught.value)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(RepositoryError, match="no such file"):
        load_repository(tmp_path / "nothing")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(RepositoryError, match="unknown model format"):
        load_repository(tmp_path / "model.bin")
    with pytest.raises(RepositoryError, match="no model files"):
        load_repository(tmp_path)


@pytest.mark.parametrize(("labels", "problem"), [
    ("red\ngreen\nred\n", "labels.txt line 3: 'red' repeats line 1 (feedback by label would be "
                          "ambiguous)"),
    ("red\n" + "g" * 3_000_000 + "\nblue\n", "labels.txt line 2: 3,000,000 characters (at most "
                                             "1,000); one label per line"),
])
def test_bad_labels_make_the_model_fail_with_file_and_line(tmp_path, labels, problem):
    rgb_model(tmp_path / "m")
    (tmp_path / "m" / "labels.txt").write_text(labels)
    (spec,) = load_repository(tmp_path / "m")
    assert spec.problem == problem and spec.labels == ()


def test_blank_lines_are_not_duplicates(tmp_path):
    rgb_model(tmp_path / "m", labels=("red", "", "blue"))
    (spec,) = load_repository(tmp_path / "m")
    assert spec.labels == ("red", "", "blue") and spec.problem == ""
