"""The pipeline as data: loading, grid expansion and checks against the notebooks' parameters cells."""

from __future__ import annotations

import textwrap

import pytest

from powerpipe.core import paths
from powerpipe.spec.config import load_config, validate_parameters
from powerpipe.core.exceptions import ConfigError, NotebookError, ParameterError
from powerpipe.spec.parameterize import read_parameters

from .conftest import make_notebook


def write_config(tmp_path, text: str):
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def train_notebook(tmp_path):
    return make_notebook(
        tmp_path / "train.ipynb",
        "data_path: str | None = None\nn_estimators: int = 4\nmax_depth: int | None = 2\nrate: float = 0.1\n"
        "name = 'x'",
        "pass",
    )


def test_shipped_configs_are_valid():
    for path in (paths.DEFAULT_CONFIG, paths.SMOKE_CONFIG):
        config = load_config(path)
        validate_parameters(config)
    default = load_config(paths.DEFAULT_CONFIG)
    # One training point per combination of each entry's grid values, counted from the YAML itself.
    import math

    import yaml

    raw = yaml.safe_load(paths.DEFAULT_CONFIG.read_text())
    expected = sum(math.prod(len(values) for values in (entry.get("grid") or {}).values())
                   for entry in raw["stages"]["train"])
    assert len(default.training_points()) == expected > 1
    assert default.promote.metric == "rmse" and default.promote.goal == "minimize"
    assert default.promote.model_name == "BestModel" and default.promote.alias == "production"


def test_grid_expansion_and_labels(tmp_path, train_notebook):
    config = load_config(write_config(tmp_path, """
        root: .
        stages:
          train:
            - notebook: train.ipynb
              parameters: {rate: 0.5}
              grid: {n_estimators: [4, 9], max_depth: [2, null]}
    """))
    validate_parameters(config)
    points = config.training_points()
    assert [p.varying for p in points] == [
        {"n_estimators": 4, "max_depth": 2}, {"n_estimators": 4, "max_depth": None},
        {"n_estimators": 9, "max_depth": 2}, {"n_estimators": 9, "max_depth": None},
    ]
    assert all(p.parameters["rate"] == 0.5 for p in points)
    assert points[1].label == "train__n_estimators_4__max_depth_None"
    assert len({p.label for p in points}) == 4


@pytest.mark.parametrize(
    "grid, message",
    [
        ("{n_estimator: [4]}", "has no parameter 'n_estimator' (did you mean 'n_estimators'?)"),
        ("{n_estimators: [4, 'many']}", "parameter 'n_estimators' of notebook"),
        ("{n_estimators: [true]}", "takes int, got True"),
        ("{rate: ['fast']}", "takes float"),
        ("{name: [3]}", "takes str"),
    ],
)
def test_bad_grid_values_name_file_notebook_and_key(tmp_path, train_notebook, grid, message):
    config = load_config(write_config(tmp_path, f"""
        root: .
        stages:
          train:
            - notebook: train.ipynb
              grid: {grid}
    """))
    with pytest.raises(ParameterError) as error:
        validate_parameters(config)
    text = str(error.value)
    assert message in text and "pipeline.yaml" in text and "train.ipynb" in text


def test_ints_are_accepted_for_floats(tmp_path, train_notebook):
    config = load_config(write_config(tmp_path, """
        root: .
        stages:
          train:
            - notebook: train.ipynb
              grid: {rate: [1, 0.5]}
    """))
    validate_parameters(config)


@pytest.mark.parametrize(
    "text, message",
    [
        ("stages: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
        ("stages: {train: []}", "non-empty list"),
        ("stages:\n  train:\n    - notebook: missing.ipynb\n", "notebook not found"),
        ("stages:\n  train:\n    - notebook: train.ipynb\n      grid: {n_estimators: []}\n", "empty list"),
        ("stages:\n  train:\n    - notebook: train.ipynb\n      grid: {n_estimators: 4}\n", "must be a list"),
        ("timeout: soon\nstages:\n  train:\n    - notebook: train.ipynb\n", "'timeout' must be int or float"),
        ("stages:\n  trian:\n    - notebook: train.ipynb\n", "unknown key 'trian' (did you mean 'train'?)"),
        ("stages:\n  train:\n    - notebook: train.ipynb\n  promote: {metric: accuracy}\n", "unknown metric"),
        ("stages:\n  train:\n    - notebook: train.ipynb\n  report: {notebook: train.ipynb}\n", "needs stages.promote"),
    ],
)
def test_bad_configs(tmp_path, train_notebook, text, message):
    path = write_config(tmp_path, "root: .\n" + text if not text.startswith("-") else text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_runner_parameters_must_be_declared(tmp_path):
    make_notebook(tmp_path / "bare.ipynb", "n: int = 1", "pass")
    config = load_config(write_config(tmp_path, "root: .\nstages:\n  train:\n    - notebook: bare.ipynb\n"))
    with pytest.raises(ConfigError, match="must declare parameter\\(s\\) data_path"):
        validate_parameters(config)


def test_notebook_without_parameters_cell(tmp_path):
    path = make_notebook(tmp_path / "none.ipynb", None, "pass")
    with pytest.raises(NotebookError, match="no cell tagged 'parameters'"):
        read_parameters(path)


def test_parameter_types_from_annotations_and_defaults(train_notebook):
    params = read_parameters(train_notebook)
    assert params["max_depth"].accepts(None) and params["max_depth"].accepts(3)
    assert not params["max_depth"].accepts("3")
    assert params["name"].accepts("y") and not params["name"].accepts(1)  # from the default's type
    assert params["rate"].accepts(1) and not params["rate"].accepts(True)


def test_notebook_listed_twice_names_its_fixed_parameters_and_duplicates_are_refused(tmp_path, train_notebook):
    config = load_config(write_config(tmp_path, """
        root: .
        stages:
          train:
            - notebook: train.ipynb
              parameters: {rate: 0.5}
            - notebook: train.ipynb
              parameters: {rate: 0.25}
              grid: {n_estimators: [4]}
    """))
    assert [p.label for p in config.training_points()] == ["train__rate_0.5", "train__rate_0.25__n_estimators_4"]
    with pytest.raises(ConfigError, match="is already in"):
        load_config(write_config(tmp_path, """
            root: .
            stages:
              train:
                - notebook: train.ipynb
                  grid: {n_estimators: [4, 4]}
        """))
