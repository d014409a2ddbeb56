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


def test_strings_from_snakemake_config_become_the_numbers_and_booleans_the_schema_wants():
    """`--config 'selection={"weights": {"clip": 2.0}}'` hands every nested value over as a string (YAML BaseLoader)."""
    config = validate_config({"selection": {"weights": {"clip": "2.0", "reward": "1", "length": "1e-3", "gpt": "-0.5"},
                                            "n_select": "15", "selector": {"monotone": "false"}},
                              "toy": {"flaw_rates": ["0.1", "0.5"]},  # array items
                              "resources": {"scoring": {"mem_mb": "null", "runtime": "30"},  # via $ref, [integer, null]
                                            "finetune": {"mem_mb": "16000"}},
                              "scoring": {"gpt": {"enabled": "True"}}})
    assert config["selection"]["weights"] == {"clip": 2.0, "reward": 1, "length": 0.001, "gpt": -0.5}
    assert config["selection"]["n_select"] == 15 and config["selection"]["selector"]["monotone"] is False
    assert config["toy"]["flaw_rates"] == [0.1, 0.5]
    assert config["resources"]["scoring"]["mem_mb"] is None and config["resources"]["scoring"]["runtime"] == 30
    assert config["resources"]["finetune"]["mem_mb"] == 16000
    assert config["scoring"]["gpt"]["enabled"] is True


def test_strings_stay_strings_where_the_schema_allows_strings():
    config = validate_config({"results": "2024", "models": {"vlm": {"path": "7"}}, "labels": {"suites": ["1"]},
                              "toy": {"models": {"clip": {"steps": "5", "batch_size": "2", "lr": "0.1",
                                                          "tower": "vit"}}}})
    assert config["results"] == "2024" and config["models"]["vlm"]["path"] == "7" and config["labels"]["suites"] == ["1"]
    assert config["toy"]["models"]["clip"] == {"steps": 5, "batch_size": 2, "lr": 0.1, "tower": "vit",
                                               "hard_negatives": True}


def test_a_string_that_is_not_a_number_is_reported_with_its_place_and_only_it():
    with pytest.raises(ConfigError) as err:
        validate_config({"selection": {"weights": {"clip": "two", "reward": "1.5"}, "n_select": "2.5"},
                         "dataset": {"allow_outside_root": "maybe"}})
    message = str(err.value)
    assert "reward" not in message
    assert "selection.weights.clip: 'two' is not of type 'number'" in message
    assert "selection.n_select: '2.5' is not of type 'integer'" in message
    assert "dataset.allow_outside_root: 'maybe' is not of type 'boolean'" in message


def test_coercion_follows_any_of_and_one_of_branches():
    schema = {"type": "object", "properties": {
        "epochs": {"anyOf": [{"type": "integer"}, {"enum": ["auto"]}]},
        "lr": {"oneOf": [{"type": "number"}, {"type": "null"}]}}}
    assert validate_config({"epochs": "3", "lr": "0.5"}, schema) == {"epochs": 3, "lr": 0.5}
    assert validate_config({"epochs": "auto", "lr": "~"}, schema) == {"epochs": "auto", "lr": None}


def test_overriding_one_weight_keeps_the_others():
    config = validate_config({"selection": {"weights": {"clip": "2.0"}}})
    assert config["selection"]["weights"] == {"clip": 2.0, "reward": 1.0, "length": 1.0, "gpt": 1.0}
