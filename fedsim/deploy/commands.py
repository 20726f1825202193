"""Command lines for a Flower 1.39 deployment: SuperLink, SuperNode and the ``flwr`` CLI.

Pure functions from options to ``argv`` lists (and to the text of the ``flwr`` CLI's
connection file), so ``fedsim deploy server/client`` and the end-to-end tests start the
processes exactly the way a user would. Every flag below was checked against
``flower-superlink --help`` / ``flower-supernode --help`` of flwr 1.39.0 and with real
processes (``docs/deploy-notes-1.39.md``).

Flower 1.39's listeners:

- SuperLink Fleet API, gRPC (grpc-rere), ``--fleet-api-address`` (default ``0.0.0.0:9092``):
  what SuperNodes dial.
- SuperLink Control + Runtime (ServerAppIo) API, HTTP(S) by uvicorn, ``--host``/``--port``
  (default ``127.0.0.1:8000``): what ``flwr run/ls/log/stop/supernode register`` dial.
  ``--control-api-address`` is deprecated in 1.39 and ignored.
- SuperNode ClientAppIo API, HTTP, ``--host``/``--port`` (default ``127.0.0.1:9094``):
  local to the device; two SuperNodes on one host need two ports.

This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedsim.keys import NUM_PARTITIONS, PARTITION_ID

ConfigValue = bool | int | float | str

DEFAULT_FLEET_ADDRESS = "0.0.0.0:9092"
DEFAULT_CONTROL_HOST = "127.0.0.1"
DEFAULT_CONTROL_PORT = 8000
DEFAULT_APPIO_HOST = "127.0.0.1"
DEFAULT_APPIO_PORT = 9094
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ServerTls:
    """The SuperLink's TLS files (PEM): CA certificate, server certificate, server key."""

    ca_cert: str
    cert: str
    key: str


def _check_port(port: int, what: str) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"{what} must be a TCP port in 1..65535; got {port}")


def _check_address(address: str, what: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{what} must be HOST:PORT (IPv6 as [::1]:PORT); got {address!r}")
    _check_port(int(port), what)


def format_config_value(value: ConfigValue) -> str:
    """Encode one node-config/run-config value the way Flower parses it (a TOML value).

    Flower 1.39 splits ``--node-config`` with ``(\\S+?)=('[^']*'|"[^"]*"|\\S+)`` and reads
    each value as TOML, so strings are double-quoted and may hold neither ``"`` nor ``\\``.
    """
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"config values must be finite; got {value}")
        return repr(value)
    if isinstance(value, str):
        if '"' in value or "\\" in value or "\n" in value:
            raise ValueError(f'config strings may not contain ", \\ or newlines; got {value!r}')
        return f'"{value}"'
    raise TypeError(f"config values are bool, int, float or str; got {type(value).__name__}")


def format_config(config: Mapping[str, ConfigValue]) -> str:
    """``{"partition-id": 0, "name": "pi 4"}`` -> ``'partition-id=0 name="pi 4"'``."""
    parts = []
    for key, value in config.items():
        if not _KEY.match(key):
            raise ValueError(f"config keys are [A-Za-z0-9_-]+ (TOML bare keys); got {key!r}")
        parts.append(f"{key}={format_config_value(value)}")
    return " ".join(parts)


def partition_node_config(
    partition_id: int, num_partitions: int, extra: Mapping[str, ConfigValue] | None = None
) -> dict[str, ConfigValue]:
    """The node config a fedsim ClientApp reads: ``partition-id``, ``num-partitions``, extras."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"{PARTITION_ID} must be in [0, {NUM_PARTITIONS}); got {partition_id} of {num_partitions}"
        )
    config: dict[str, ConfigValue] = {PARTITION_ID: partition_id, NUM_PARTITIONS: num_partitions}
    for key, value in (extra or {}).items():
        if key in config:
            raise ValueError(f"{key!r} is set by partition_id/num_partitions; do not pass it in extra")
        config[key] = value
    return config


def superlink_argv(
    *,
    tls: ServerTls | None,
    supernode_auth: bool = True,
    fleet_address: str = DEFAULT_FLEET_ADDRESS,
    control_host: str = DEFAULT_CONTROL_HOST,
    control_port: int = DEFAULT_CONTROL_PORT,
    database: str | None = None,
    runtime_dependency_install: bool = False,
    log_file: str | None = None,
    executable: str = "flower-superlink",
) -> list[str]:
    """argv for ``flower-superlink`` (Flower 1.39, grpc-rere Fleet API).

    Parameters
    ----------
    tls
        Certificates; ``None`` means ``--insecure`` (plaintext on every API).
    supernode_auth
        ``--enable-supernode-auth``: only SuperNodes whose public key was registered with
        ``flwr supernode register`` may connect. Flower refuses it without TLS.
    fleet_address
        Where SuperNodes connect (gRPC). Use ``0.0.0.0:PORT`` to accept devices on the LAN.
    control_host, control_port
        The HTTPS Control/Runtime API that ``flwr`` talks to.
    database
        SQLite file for the SuperLink state; ``None`` keeps it in memory, and then node
        registrations are lost when the SuperLink restarts.
    runtime_dependency_install
        Flower 1.39 installs an app's dependencies with ``uv sync`` by default, which
        needs the network; fedsim turns it off (the environment is installed already).
    log_file
        ``--log-file``: rotated log file.
    executable
        Path of ``flower-superlink`` (give the venv's own to avoid PATH surprises).
    """
    if supernode_auth and tls is None:
        raise ValueError(
            "SuperNode authentication requires TLS (Flower exits otherwise): pass tls= or supernode_auth=False"
        )
    _check_address(fleet_address, "fleet_address")
    _check_port(control_port, "control_port")
    argv = [executable]
    if tls is None:
        argv.append("--insecure")
    else:
        argv += ["--ssl-ca-certfile", tls.ca_cert, "--ssl-certfile", tls.cert, "--ssl-keyfile", tls.key]
    if supernode_auth:
        argv.append("--enable-supernode-auth")
    argv += ["--fleet-api-type", "grpc-rere", "--fleet-api-address", fleet_address]
    argv += ["--host", control_host, "--port", str(control_port)]
    if database is not None:
        argv += ["--database", database]
    if not runtime_dependency_install:
        argv.append("--disable-runtime-dependency-installation")
    if log_file is not None:
        argv += ["--log-file", log_file]
    return argv


def supernode_argv(
    *,
    superlink: str,
    root_certificates: str | None,
    auth_private_key: str | None = None,
    node_config: Mapping[str, ConfigValue] | None = None,
    appio_host: str = DEFAULT_APPIO_HOST,
    appio_port: int = DEFAULT_APPIO_PORT,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
    executable: str = "flower-supernode",
) -> list[str]:
    """argv for ``flower-supernode`` (Flower 1.39, grpc-rere).

    Parameters
    ----------
    superlink
        The SuperLink's Fleet API, ``HOST:PORT``; HOST must be in the server certificate's
        subjectAltName.
    root_certificates
        CA certificate (PEM) that signed the SuperLink's certificate; ``None`` means
        ``--insecure`` (plaintext; a TLS SuperLink drops the connection).
    auth_private_key
        Unencrypted OpenSSH EC private key (see :mod:`fedsim.deploy.certs`); its public
        half must be registered on the SuperLink. Flower refuses a key without TLS.
    node_config
        ``--node-config`` pairs, e.g. from :func:`partition_node_config`.
    appio_host, appio_port
        The SuperNode's local ClientAppIo API; distinct ports for SuperNodes sharing a host.
    max_retries, max_wait_time
        Give up connecting after this many tries / seconds (default: retry forever).
    executable
        Path of ``flower-supernode``. The SuperNode starts ``flower-superexec`` and
        ``flwr-clientapp`` by name from PATH: run it with its venv's ``bin`` first in PATH
        (see :func:`venv_env`).
    """
    _check_address(superlink, "superlink")
    _check_port(appio_port, "appio_port")
    if auth_private_key is not None and root_certificates is None:
        raise ValueError("SuperNode authentication requires TLS: pass root_certificates with auth_private_key")
    if max_retries is not None and max_retries < 0:
        raise ValueError(f"max_retries must be >= 0; got {max_retries}")
    if max_wait_time is not None and not max_wait_time > 0:
        raise ValueError(f"max_wait_time must be > 0 seconds; got {max_wait_time}")
    argv = [executable, "--grpc-rere", "--superlink", superlink]
    if root_certificates is None:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", root_certificates]
    if auth_private_key is not None:
        argv += ["--auth-supernode-private-key", auth_private_key]
    if node_config:
        argv += ["--node-config", format_config(node_config)]
    argv += ["--host", appio_host, "--port", str(appio_port)]
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        argv += ["--max-wait-time", repr(float(max_wait_time))]
    return argv


def connection_toml(
    name: str,
    address: str,
    root_certificates: str | None,
    default: bool = True,
) -> str:
    """Text of ``$FLWR_HOME/config.toml`` declaring one SuperLink connection for ``flwr``.

    In Flower 1.39 the CLI reads connections from ``$FLWR_HOME/config.toml``
    (``[superlink.<name>]`` with ``address``, ``root-certificates``, ``insecure``), not
    from the app's ``pyproject.toml``: a ``[tool.flwr.federations]`` table there is
    *migrated* by ``flwr run .``, which also comments it out of ``pyproject.toml``.

    ``address`` is the Control API (``--host:--port`` of the SuperLink), not the Fleet API.
    ``root_certificates`` must be an absolute path; ``None`` writes ``insecure = true``.
    """
    if not _KEY.match(name):
        raise ValueError(f"connection names are [A-Za-z0-9_-]+; got {name!r}")
    _check_address(address, "address")
    lines = ["[superlink]"]
    if default:
        lines.append(f'default = "{name}"')
    lines += ["", f"[superlink.{name}]", f'address = "{address}"']
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        if not os.path.isabs(root_certificates):
            raise ValueError(f"root_certificates must be an absolute path; got {root_certificates!r}")
        lines.append(f"root-certificates = {format_config_value(root_certificates)}")
    return "\n".join(lines) + "\n"


def register_node_argv(public_key: str, connection: str, name: str | None = None, flwr: str = "flwr") -> list[str]:
    """``flwr supernode register PUBKEY CONNECTION [--name NAME] --format json``.

    Prints ``{"success": true, "node-id": ...}``; the SuperLink must be running.
    """
    argv = [flwr, "supernode", "register", public_key, connection]
    if name is not None:
        argv += ["--name", name]
    return argv + ["--format", "json"]


def run_argv(
    app_dir: str,
    connection: str,
    run_config: Mapping[str, ConfigValue] | None = None,
    flwr: str = "flwr",
) -> list[str]:
    """``flwr run APP CONNECTION [--run-config ...] --format json``: submit, print the run id.

    It returns as soon as the run is queued; follow it with :func:`run_status_argv`.
    (``flwr run --stream`` exits 0 even when the run failed.)
    """
    argv = [flwr, "run", app_dir, connection]
    if run_config:
        argv += ["--run-config", format_config(run_config)]
    return argv + ["--format", "json"]


def run_status_argv(run_id: int, connection: str, flwr: str = "flwr") -> list[str]:
    """``flwr ls CONNECTION --run-id ID --format json``.

    ``runs[0]["status"]`` is ``pending``/``starting``/``running`` or
    ``finished:completed``, ``finished:failed`` (``status-details`` holds the reason),
    ``finished:stopped``.
    """
    return [flwr, "ls", connection, "--run-id", str(run_id), "--format", "json"]


def venv_env(venv_bin: str, flwr_home: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process from the venv whose ``bin`` is ``venv_bin``.

    Puts ``venv_bin`` first in PATH (Flower spawns ``flower-superexec``,
    ``flwr-serverapp`` and ``flwr-clientapp`` by name), sets ``FLWR_HOME`` (where Flower
    keeps installed apps and the CLI's config.toml) and turns off telemetry and the
    update check (both go to the network).
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = flwr_home
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


def parse_run_status(ls_json: Mapping[str, object]) -> tuple[str, str]:
    """``(status, details)`` from the JSON printed by :func:`run_status_argv`'s command."""
    runs = ls_json.get("runs")
    if not isinstance(runs, list) or len(runs) != 1 or not isinstance(runs[0], Mapping):
        raise ValueError(f"expected one run in `flwr ls --run-id` output; got {ls_json!r}")
    status, details = runs[0].get("status"), runs[0].get("status-details", "")
    if not isinstance(status, str):
        raise ValueError(f"run status missing in {runs[0]!r}")
    return status, str(details)


__all__: Sequence[str] = (
    "ServerTls", "connection_toml", "format_config", "format_config_value", "parse_run_status",
    "partition_node_config", "register_node_argv", "run_argv", "run_status_argv", "superlink_argv",
    "supernode_argv", "venv_env",
)
