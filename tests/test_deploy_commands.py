"""argv builders, checked against Flower 1.39's own argument parsers."""

from __future__ import annotations

import pytest
import tomli
from flwr.common.config import parse_config_args
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from fedsim.deploy.commands import (
    ServerTls,
    connection_toml,
    format_config,
    parse_run_status,
    partition_node_config,
    register_node_argv,
    run_argv,
    run_status_argv,
    superlink_argv,
    supernode_argv,
    venv_env,
)

TLS = ServerTls(ca_cert="/pki/ca.pem", cert="/pki/server.pem", key="/pki/server.key")


def test_superlink_argv_tls_auth_exact():
    argv = superlink_argv(tls=TLS, fleet_address="127.0.0.1:19092", control_port=19093)
    assert argv == [
        "flower-superlink",
        "--ssl-ca-certfile", "/pki/ca.pem", "--ssl-certfile", "/pki/server.pem",
        "--ssl-keyfile", "/pki/server.key",
        "--enable-supernode-auth",
        "--fleet-api-type", "grpc-rere", "--fleet-api-address", "127.0.0.1:19092",
        "--host", "127.0.0.1", "--port", "19093",
        "--disable-runtime-dependency-installation",
    ]


def test_superlink_argv_parsed_by_flower():
    argv = superlink_argv(tls=TLS, fleet_address="0.0.0.0:9092", control_host="0.0.0.0",
                          control_port=9093, database="/srv/state.db", log_file="/srv/link.log")
    ns = _parse_args_run_superlink().parse_args(argv[1:])
    assert (ns.ssl_ca_certfile, ns.ssl_certfile, ns.ssl_keyfile) == (TLS.ca_cert, TLS.cert, TLS.key)
    assert ns.enable_supernode_auth and not ns.insecure
    assert ns.fleet_api_type == "grpc-rere" and ns.fleet_api_address == "0.0.0.0:9092"
    assert (ns.host, ns.port) == ("0.0.0.0", 9093)
    assert ns.database == "/srv/state.db" and ns.log_file == "/srv/link.log"
    assert ns.runtime_dependency_install is False


def test_superlink_insecure():
    argv = superlink_argv(tls=None, supernode_auth=False)
    ns = _parse_args_run_superlink().parse_args(argv[1:])
    assert ns.insecure and not ns.enable_supernode_auth and ns.ssl_certfile is None


def test_superlink_auth_needs_tls():
    with pytest.raises(ValueError, match="requires TLS"):
        superlink_argv(tls=None, supernode_auth=True)


@pytest.mark.parametrize("addr", ["9092", "host:", ":9092", "host:99999", "host:port"])
def test_bad_addresses(addr):
    with pytest.raises(ValueError, match="fleet_address"):
        superlink_argv(tls=TLS, fleet_address=addr)


def test_supernode_argv_parsed_by_flower():
    cfg = partition_node_config(2, 3, {"device": "pi 4", "lr-scale": 0.5, "edge": True})
    argv = supernode_argv(superlink="localhost:9092", root_certificates="/pki/ca.pem",
                          auth_private_key="/pki/nodes/n2", node_config=cfg, appio_port=9096,
                          max_retries=3, max_wait_time=10)
    assert argv[0] == "flower-supernode"
    ns = _parse_args_run_supernode().parse_args(argv[1:])
    assert ns.transport == "grpc-rere" and not ns.insecure
    assert ns.superlink == "localhost:9092" and ns.root_certificates == "/pki/ca.pem"
    assert ns.auth_supernode_private_key == "/pki/nodes/n2"
    assert (ns.host, ns.port, ns.max_retries, ns.max_wait_time) == ("127.0.0.1", 9096, 3, 10.0)
    # The node config comes back typed, as the ClientApp will read it from context.node_config.
    assert parse_config_args([ns.node_config]) == {
        "partition-id": 2, "num-partitions": 3, "device": "pi 4", "lr-scale": 0.5, "edge": True,
    }


def test_supernode_insecure_and_auth_needs_tls():
    ns = _parse_args_run_supernode().parse_args(
        supernode_argv(superlink="127.0.0.1:9092", root_certificates=None)[1:])
    assert ns.insecure and ns.root_certificates is None and ns.node_config is None
    with pytest.raises(ValueError, match="requires TLS"):
        supernode_argv(superlink="127.0.0.1:9092", root_certificates=None, auth_private_key="/k")


@pytest.mark.parametrize("kwargs, msg", [
    ({"max_retries": -1}, "max_retries"),
    ({"max_wait_time": 0}, "max_wait_time"),
    ({"appio_port": 0}, "appio_port"),
])
def test_supernode_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        supernode_argv(superlink="127.0.0.1:9092", root_certificates="/ca", **kwargs)


def test_format_config_round_trips_through_flower():
    cfg = {"a": 1, "b-c": -2.5e-3, "d_e": False, "s": "x y=z", "t": ""}
    assert format_config(cfg) == 'a=1 b-c=-0.0025 d_e=false s="x y=z" t=""'
    assert parse_config_args([format_config(cfg)]) == cfg


@pytest.mark.parametrize("cfg, err", [
    ({"bad key": 1}, ValueError), ({"k": 'quote"'}, ValueError), ({"k": float("nan")}, ValueError),
    ({"k": [1]}, TypeError), ({"a.b": 1}, ValueError),
])
def test_format_config_rejects(cfg, err):
    with pytest.raises(err):
        format_config(cfg)


def test_partition_node_config_validation():
    assert partition_node_config(0, 1) == {"partition-id": 0, "num-partitions": 1}
    with pytest.raises(ValueError, match=r"\[0, num-partitions\)"):
        partition_node_config(3, 3)
    with pytest.raises(ValueError, match="partition-id"):
        partition_node_config(0, 2, {"partition-id": 1})


def test_connection_toml_is_what_flower_reads(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    text = connection_toml("lab", "127.0.0.1:9093", "/pki/ca.pem")
    assert tomli.loads(text) == {"superlink": {"default": "lab", "lab": {
        "address": "127.0.0.1:9093", "root-certificates": "/pki/ca.pem"}}}
    (tmp_path / "config.toml").write_text(text)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    conn = read_superlink_connection("lab")
    assert (conn.address, conn.root_certificates, conn.insecure) == ("127.0.0.1:9093", "/pki/ca.pem", False)
    assert read_superlink_connection(None).name == "lab"  # the default


def test_connection_toml_insecure_and_validation():
    assert tomli.loads(connection_toml("x", "h:1", None, default=False)) == {
        "superlink": {"x": {"address": "h:1", "insecure": True}}}
    with pytest.raises(ValueError, match="absolute"):
        connection_toml("x", "h:1", "ca.pem")


def test_cli_argv():
    assert register_node_argv("/k.pub", "lab", name="n0") == [
        "flwr", "supernode", "register", "/k.pub", "lab", "--name", "n0", "--format", "json"]
    assert run_argv(".", "lab", {"round-timeout": 15.0}) == [
        "flwr", "run", ".", "lab", "--run-config", "round-timeout=15.0", "--format", "json"]
    assert run_status_argv(42, "lab") == ["flwr", "ls", "lab", "--run-id", "42", "--format", "json"]


def test_parse_run_status():
    out = {"success": True, "runs": [{"run-id": "1", "status": "finished:failed",
                                      "status-details": "ServerApp failed with exception: x"}]}
    assert parse_run_status(out) == ("finished:failed", "ServerApp failed with exception: x")
    with pytest.raises(ValueError, match="one run"):
        parse_run_status({"runs": []})


def test_venv_env():
    env = venv_env("/v/bin", "/run/flwr", base={"PATH": "/usr/bin"})
    assert env == {"PATH": "/v/bin:/usr/bin", "FLWR_HOME": "/run/flwr",
                   "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
