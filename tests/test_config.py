from dataclasses import dataclass, field

import pytest

from ldmcli.classifier import ClassifierRecipe
from ldmcli.config import TrainConfig, apply_overrides, from_dict, load_config, load_recipe, save_config, to_dict
from ldmcli.errors import UserError


def test_recipe_with_overrides(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[train]\nlr = 1e-3\nsteps = 10\nbetas = [0.5, 0.9]\n[model]\nchannels = 8\n')
    cfg = load_recipe(ClassifierRecipe, recipe, ["train.lr=2e-4", "train.precision=fp32", "data.shards=['a.tar']"])
    assert cfg.train.lr == 2e-4 and cfg.train.steps == 10 and cfg.train.betas == (0.5, 0.9)
    assert cfg.train.precision == "fp32" and cfg.model.channels == 8 and cfg.data.shards == ["a.tar"]


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(UserError, match=r"unknown config key 'train.stpes'.*'steps'"):
        from_dict(ClassifierRecipe, {"train": {"stpes": 3}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"steps": "many"}}, "must be an integer"),
        ({"train": {"precision": "fp8"}}, "must be one of"),
        ({"train": {"betas": [0.9]}}, "must have 2 items"),
        ({"train": {"compile": 1}}, "true or false"),
        ({"train": 3}, "must be a table"),
    ],
)
def test_bad_values_are_user_errors(data, message):
    with pytest.raises(UserError, match=message):
        from_dict(ClassifierRecipe, data)


def test_set_parses_toml_values_and_bare_words():
    data = apply_overrides({}, ["a.b=3", "a.c=hello", "a.d=true", "a.e=[1, 2]"])
    assert data == {"a": {"b": 3, "c": "hello", "d": True, "e": [1, 2]}}
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides({}, ["nothing"])


def test_saved_config_round_trips_and_refuses_wrong_kind_or_newer_format(tmp_path):
    cfg = from_dict(ClassifierRecipe, {"train": {"steps": 7}})
    save_config(cfg, tmp_path / "config.json", "classifier")
    assert load_config(ClassifierRecipe, tmp_path / "config.json", "classifier") == cfg
    with pytest.raises(UserError, match="expected a 'autoencoder'"):
        load_config(ClassifierRecipe, tmp_path / "config.json", "autoencoder")
    text = (tmp_path / "config.json").read_text().replace('"format_version": 1', '"format_version": 99')
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError, match="upgrade ldmcli"):
        load_config(ClassifierRecipe, tmp_path / "config.json", "classifier")


def test_optional_and_nested_types():
    @dataclass
    class Inner:
        x: float | None = None

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)
        names: list[str] = field(default_factory=list)

    cfg = from_dict(Outer, {"inner": {"x": 2}, "names": "one"})
    assert cfg.inner.x == 2.0 and cfg.names == ["one"]
    assert to_dict(from_dict(Outer, {}))["inner"] == {"x": None}
    assert from_dict(TrainConfig, to_dict(TrainConfig())) == TrainConfig()


def test_a_recipe_class_section_defaults_survive_partial_overrides():
    @dataclass
    class Recipe:
        train: TrainConfig = field(default_factory=lambda: TrainConfig(grad_clip=0.0, betas=(0.5, 0.9)))

    cfg = load_recipe(Recipe, None, ["train.lr=1e-3"])
    assert cfg.train.lr == 1e-3 and cfg.train.grad_clip == 0.0 and cfg.train.betas == (0.5, 0.9)
