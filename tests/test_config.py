"""Config validation: defaults are filled, unknown or mistyped keys stop the run with a useful message."""

import copy

import pytest
import yaml

from vlselect.config import ConfigError, load_config, validate_config


def test_default_config_is_valid_and_complete():
    config = load_config("config.yaml")
    assert config["labels"]["n_subsets"] == 30
    assert config["selection"]["n_select"] == 200
    assert config["dataset"]["max_bad_fraction"] == 0.05


def test_defaults_are_filled_for_a_minimal_config():
    config = validate_config({"dataset": {"format": "toy"}})
    assert config["toy"]["n_examples"] == 3439
    assert config["scoring"]["gpt"]["api_key_env"] == "OPENAI_API_KEY"
    assert config["finetune"]["trainable"] == ["language_projection"]


def test_unknown_key_names_the_key_and_the_allowed_ones():
    raw = yaml.safe_load(open("config.yaml"))
    raw["selection"]["wieghts"] = {"clip": 1}
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    message = str(err.value)
    assert "'wieghts'" in message and "under selection" in message
    assert "weights" in message and "n_select" in message


def test_wrong_type_is_reported_with_its_place():
    raw = yaml.safe_load(open("config.yaml"))
    bad = copy.deepcopy(raw)
    bad["labels"]["n_subsets"] = "thirty"
    with pytest.raises(ConfigError, match=r"labels\.n_subsets"):
        validate_config(bad)
    bad = copy.deepcopy(raw)
    bad["scoring"]["device"] = "tpu"
    with pytest.raises(ConfigError, match=r"scoring\.device"):
        validate_config(bad)


def test_both_toy_clips_share_one_recipe_and_only_the_scoring_clip_has_a_tower():
    config = validate_config({"toy": {"models": {"clip": {"steps": 5, "batch_size": 2, "lr": 0.1},
                                                 "vision": {"steps": 5, "batch_size": 2, "lr": 0.1}}}})
    assert config["toy"]["models"]["clip"]["tower"] == "resnet"
    for which in ("clip", "vision"):
        assert config["toy"]["models"][which]["hard_negatives"] is True
        bad = {"toy": {"models": {which: {"steps": 0, "batch_size": 2, "lr": 0.1}}}}
        with pytest.raises(ConfigError, match=rf"toy\.models\.{which}\.steps"):
            validate_config(bad)
    with pytest.raises(ConfigError, match=r"'tower' under toy\.models\.vision"):
        validate_config({"toy": {"models": {"vision": {"steps": 5, "batch_size": 2, "lr": 0.1, "tower": "vit"}}}})
