import sys
from pathlib import Path

import pytest

from fedsim.registry import CODECS, STRATEGIES, PluginError, Registry

PLUGINS = str(Path(__file__).parent / "plugins")


@pytest.fixture
def plugin_path(monkeypatch):
    monkeypatch.syspath_prepend(PLUGINS)
    yield
    sys.modules.pop("fedsim_example_plugin", None)


def test_register_and_build_checks_parameters():
    reg: Registry = Registry("widget", "fedsim.widgets")

    @reg.register("w")
    def make(size: int = 1, *, color: str = "red"):
        return (size, color)

    assert reg.build("w", {"size": 3}) == (3, "red")
    with pytest.raises(PluginError, match="unknown parameter 'colour'; allowed: size, color"):
        reg.build("w", {"colour": "blue"})
    with pytest.raises(PluginError, match="already registered"):
        reg.add("w", lambda: None)


def test_unknown_name_lists_known():
    with pytest.raises(PluginError) as info:
        CODECS.get("idenity")
    msg = str(info.value)
    assert "unknown codec 'idenity'; known: " in msg and "identity" in msg and "fp16" in msg


def test_module_attr_reference():
    assert CODECS.get("fedsim.codecs.dense:Fp16").__name__ == "Fp16"
    with pytest.raises(PluginError, match="cannot import module"):
        CODECS.get("no_such_module_xyz:Thing")
    with pytest.raises(PluginError, match="has no attribute"):
        CODECS.get("fedsim.codecs.dense:Nope")


def test_flower_strategies_registered_with_fedsim_defaults():
    s = STRATEGIES.build("fedavg")
    assert s.fraction_train == 1.0 and s.fraction_evaluate == 0.0 and s.min_available_nodes == 1
    s = STRATEGIES.build("fedtrimmedavg", {"beta": 0.1})
    assert s.beta == 0.1


def test_entry_points_are_found(plugin_path):
    assert "example-fedmedian" in STRATEGIES.names()
    assert "example-sign" in CODECS.names()
    assert CODECS.get("example-sign").__name__ == "SignCodec"


def test_plugin_strategy_and_codec_run_through_fedsim(plugin_path, tmp_path, cfg_factory):
    """A third-party strategy (entry point) and codec (module:attr) drive a real run."""
    import fedsim_example_plugin as plugin
    from conftest import run_inprocess

    cfg = cfg_factory("strategy.name=example-fedmedian", "strategy.params={tag: t}",
                      "codec.name=fedsim_example_plugin:SignCodec", "rounds=2")
    from fedsim.config import check_plugins
    check_plugins(cfg)
    before = plugin.CALLS["aggregate_train"]
    summary = run_inprocess(cfg, tmp_path)
    assert plugin.CALLS["aggregate_train"] - before == 2
    numel = 64 * 32 + 32 + 32 * 10 + 10
    per_client = sum((n + 7) // 8 + 4 for n in (64 * 32, 32, 32 * 10, 10))
    assert summary["total_bytes_up"] == 2 * 5 * per_client
    assert per_client < numel * 4 / 25  # ~1 bit a coordinate
