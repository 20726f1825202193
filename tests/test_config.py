import pytest
from pydantic import ValidationError

from fedsim.config import ClientSpec, ConfigError, apply_overrides, check_plugins, load_config


def test_defaults_validate_and_are_frozen():
    cfg = load_config(None)
    assert cfg.strategy.name == "fedavg" and cfg.codec.name == "identity"
    with pytest.raises(ValidationError, match="frozen"):
        cfg.rounds = 3  # frozen


def test_quickstart_file_loads():
    cfg = load_config("configs/quickstart.yaml")
    assert cfg.data.name == "mnist5k" and cfg.data.num_clients == 100
    check_plugins(cfg)


def test_overrides_are_typed_and_nested():
    cfg = load_config("configs/quickstart.yaml", ["rounds=5", "strategy.name=fedmedian", "train.lr=0.01",
                                                  "data.partition.alpha=1", "codec.params={}"])
    assert cfg.rounds == 5 and isinstance(cfg.rounds, int)
    assert cfg.strategy.name == "fedmedian"
    assert cfg.train.lr == 0.01
    assert cfg.data.partition.alpha == 1.0


def test_apply_overrides_does_not_touch_input():
    data = {"a": {"b": 1}}
    out = apply_overrides(data, ["a.b=2", "a.c=[1, 2]"])
    assert data == {"a": {"b": 1}} and out == {"a": {"b": 2, "c": [1, 2]}}


@pytest.mark.parametrize("override, needle", [
    ("roundz=5", "config key 'roundz': unknown key; allowed here: name, seed, rounds"),
    ("train.lrr=0.1", "config key 'train.lrr': unknown key; allowed here: local_epochs, batch_size, lr"),
    ("data.partition.kind=random", "config key 'data.partition.kind'"),
    ("rounds=abc", "config key 'rounds'"),
    ("rounds=0", "config key 'rounds'"),
    ("clients_per_round=1000", "exceeds data.num_clients"),
])
def test_errors_are_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config("configs/quickstart.yaml", [override])
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["rounds"])


def test_unknown_plugin_lists_known_names():
    cfg = load_config(None, ["strategy.name=fedavgg"])
    with pytest.raises(ConfigError) as info:
        check_plugins(cfg)
    msg = str(info.value)
    assert msg.startswith("config key 'strategy.name': unknown strategy 'fedavgg'; known: ")
    assert "fedavg" in msg and "fedmedian" in msg


def test_unknown_plugin_parameter_lists_allowed():
    cfg = load_config(None, ["strategy.params={fraction_trian: 0.5}"])
    with pytest.raises(ConfigError, match="unknown parameter 'fraction_trian'; allowed: .*fraction_train"):
        check_plugins(cfg)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_client_spec_json_round_trip():
    cfg = load_config("configs/quickstart.yaml")
    spec = ClientSpec.from_config(cfg)
    assert ClientSpec.from_json(spec.to_json()) == spec
