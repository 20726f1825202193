"""Typed reads of a client's config record: a wrong type is a ValueError naming the key."""

import pytest
from flwr.app import ConfigRecord

from fedsim.clients.tasks import config_integer, config_number


def test_numbers_and_defaults():
    cfg = ConfigRecord({"a": 3, "b": 0.25, "c": 4.0})
    assert config_number(cfg, "a") == 3.0
    assert config_number(cfg, "b") == 0.25
    assert config_integer(cfg, "c") == 4
    assert config_integer(cfg, "missing", 7) == 7
    assert config_number(cfg, "missing", 0.5) == 0.5


@pytest.mark.parametrize("value, msg", [("3", "must be a number, got str"), (True, "must be a number, got bool"),
                                        (b"1", "must be a number, got bytes"), ([1, 2], "must be a number, got list")])
def test_a_value_of_the_wrong_type_names_the_key(value, msg):
    with pytest.raises(ValueError, match=f"config 'k' {msg}"):
        config_number(ConfigRecord({"k": value}), "k")


def test_missing_and_fractional():
    with pytest.raises(ValueError, match="config 'k' is missing"):
        config_integer(ConfigRecord({}), "k")
    with pytest.raises(ValueError, match="config 'k' must be a whole number, got 2.5"):
        config_integer(ConfigRecord({"k": 2.5}), "k")
