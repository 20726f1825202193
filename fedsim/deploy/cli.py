"""``fedsim deploy``: run an experiment on real devices over Flower's gRPC transport.

``fedsim deploy certs DIR [--ip IP ...] [--dns NAME ...] [--nodes n0,n1,...]``
    a lab CA, the SuperLink's TLS certificate and one key pair per SuperNode;
``fedsim deploy add-node DIR NAME``
    one more SuperNode key pair (prints how to register it);
``fedsim deploy server CONFIG --certs DIR [--set key=value ...]``
    SuperLink (TLS + SuperNode authentication), node registration, the run, its status;
``fedsim deploy client --superlink HOST:PORT --partition-id I --num-partitions N ...``
    a SuperNode with the right flags (replaces this process with ``flower-supernode``);
``fedsim deploy export-data CONFIG OUT.npz``
    the config's dataset as an ``.npz`` that an edge device loads with numpy only.

Only the standard library, typer and Flower are imported at start-up (an edge
device has them); certificates, configs and datasets are imported by the commands
that need them.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import NoReturn

import typer

from . import commands as C

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run an experiment on real devices (Flower SuperLink/SuperNodes over gRPC, TLS, node auth).")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _parse_value(text: str) -> C.ConfigValue:
    """A ``--node-config`` value: int, float, true/false, else a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@app.command()
def certs(
    directory: Path = typer.Argument(..., help="where to write ca.pem, server.pem/.key and nodes/"),
    ip: list[str] | None = typer.Option(None, "--ip", help="an IP address of the server (repeatable)"),
    dns: list[str] | None = typer.Option(None, "--dns", help="a host name of the server (repeatable)"),
    nodes: list[str] | None = typer.Option(None, "--nodes",
                                           help="node names, each gets a key pair: n0,n1,n2 (repeatable)"),
    force: bool = typer.Option(False, help="overwrite existing key material"),
) -> None:
    """Make a lab CA, the SuperLink's certificate and SuperNode key pairs.

    The certificate always names localhost and 127.0.0.1 (the local `flwr` CLI dials
    those); add every address devices use to reach the server with --ip/--dns.
    """
    from .certs import DEFAULT_DNS_NAMES, DEFAULT_IPS, write_lab_pki

    names = [n.strip() for item in nodes or [] for n in item.split(",") if n.strip()]
    try:
        pki = write_lab_pki(directory, nodes=names, dns_names=list(dict.fromkeys([*DEFAULT_DNS_NAMES, *(dns or [])])),
                            ips=list(dict.fromkeys([*DEFAULT_IPS, *(ip or [])])), overwrite=force)
    except (ValueError, FileExistsError) as err:
        _fail(str(err))
    typer.echo(f"CA certificate   {pki.ca_cert}   (copy to every device)")
    typer.echo(f"CA key           {pki.ca_key}   (keep on the server, secret)")
    typer.echo(f"server cert/key  {pki.server_cert}, {pki.server_key}")
    for name, (priv, pub) in pki.node_keys.items():
        typer.echo(f"node {name:<11} {priv} (copy to that device only), {pub}")
    typer.echo(f"next: fedsim deploy server CONFIG --certs {directory}")


@app.command("add-node")
def add_node(
    directory: Path = typer.Argument(..., help="the directory made by `fedsim deploy certs`"),
    name: str = typer.Argument(..., help="the node's name (a file name)"),
    workdir: Path = typer.Option(Path("fedsim-deploy"), help="the server's --workdir (for the register command)"),
) -> None:
    """Make one more SuperNode key pair in DIR/nodes and print how to register it."""
    from .certs import write_node_keypair

    try:
        priv, pub = write_node_keypair(directory / "nodes", name)
    except (ValueError, FileExistsError) as err:
        _fail(str(err))
    typer.echo(f"private key {priv} (copy to the device only; mode 0600)")
    typer.echo(f"public key  {pub}")
    typer.echo("`fedsim deploy server` registers every key in DIR/nodes when it starts; on a running one:")
    typer.echo("  " + register_command(pub, name, workdir))


def register_command(public_key: Path, name: str, workdir: Path) -> str:
    """The shell command that registers ``public_key`` on a running ``fedsim deploy server``:
    absolute paths (the flwr executable, the key, the server's FLWR_HOME), shell-quoted, so it
    works from any directory; the same argv the server runs (:func:`commands.register_node_argv`)."""
    import shlex

    from .commands import register_node_argv
    from .procs import DeployError, flower_executable
    from .server import CONNECTION

    try:
        flwr = flower_executable("flwr")
    except DeployError:
        flwr = "flwr"
    argv = register_node_argv(str(public_key.resolve()), CONNECTION, name=name, flwr=flwr)
    return f"FLWR_HOME={shlex.quote(str(workdir.resolve() / 'flwr'))} " + shlex.join(argv)


@app.command()
def server(
    config: Path = typer.Argument(..., help="experiment YAML (the same that `fedsim run` simulates)"),
    certs_dir: Path = typer.Option(..., "--certs", help="the directory made by `fedsim deploy certs`"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a field: key.sub=value (repeatable)"),
    workdir: Path = typer.Option(Path("fedsim-deploy"), help="logs, the flwr CLI's FLWR_HOME, the generated app"),
    fleet_address: str = typer.Option("0.0.0.0:9092", help="where SuperNodes connect (gRPC)"),
    control_port: int = typer.Option(9093, help="local port of the SuperLink's Control API (flwr CLI)"),
    database: str | None = typer.Option(None, help="SQLite file for the SuperLink's state (default: memory)"),
    timeout: float | None = typer.Option(None, help="stop the run after this many seconds"),
    poll: float = typer.Option(5.0, help="seconds between run status checks (each starts `flwr ls`)"),
    round_timeout: float | None = typer.Option(
        None, help="seconds a round waits for replies (default: the config's simulation.round_timeout if it "
                   "sets one, else 120)"),
) -> None:
    """Start a SuperLink (TLS + node auth), register DIR/nodes/*.pub, run CONFIG, follow it.

    Exits 0 when the run completed, 1 when it failed or was stopped, 2 on a bad
    config or missing files.
    """
    from fedsim.config import ConfigError
    from fedsim.registry import PluginError

    from .procs import DeployError
    from .server import Deployment, ServerOptions

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)  # systemd/CI stop: stop the run and the SuperLink
    opts = ServerOptions(config=config, certs=certs_dir, overrides=list(set_ or []), workdir=workdir,
                         fleet_address=fleet_address, control_port=control_port, database=database,
                         timeout=timeout, poll=poll, round_timeout=round_timeout)
    try:
        code = Deployment(opts, say=lambda s: typer.echo(s)).run()
    except (ConfigError, PluginError, ValueError) as err:
        _fail(str(err))
    except DeployError as err:
        _fail(str(err), code=1)
    raise typer.Exit(code)


@app.command()
def client(
    superlink: str = typer.Option(..., help="the SuperLink's Fleet API, HOST:PORT (HOST as in its certificate)"),
    partition_id: int = typer.Option(..., help="this device's client id, 0..N-1"),
    num_partitions: int = typer.Option(..., help="N, the config's data.num_clients"),
    certs_dir: Path | None = typer.Option(None, "--certs", help="directory with ca.pem and nodes/NAME"),
    name: str | None = typer.Option(None, help="node name: the key is CERTS/nodes/NAME"),
    root_cert: Path | None = typer.Option(None, help="CA certificate (default CERTS/ca.pem)"),
    key: Path | None = typer.Option(None, help="node private key (default CERTS/nodes/NAME)"),
    insecure: bool = typer.Option(False, help="plaintext, no authentication (only for a --insecure SuperLink)"),
    trainer: str = typer.Option("auto", help="auto (torch if installed), torch or numpy"),
    node_config: list[str] | None = typer.Option(None, "--node-config", help="extra key=value (repeatable)"),
    port: int = typer.Option(C.DEFAULT_APPIO_PORT, help="local ClientAppIo port (distinct per SuperNode on a host)"),
    max_retries: int | None = typer.Option(None, help="give up connecting after this many tries"),
    max_wait_time: float | None = typer.Option(None, help="give up connecting after this many seconds"),
    flwr_home: Path | None = typer.Option(None, help="Flower's state directory (default $FLWR_HOME or ~/.flwr)"),
    dry_run: bool = typer.Option(False, help="print the command and exit"),
) -> None:
    """Start a SuperNode for this device (execs flower-supernode with the right flags)."""
    if trainer not in ("auto", "torch", "numpy"):
        _fail(f"--trainer must be auto, torch or numpy; got {trainer!r}")
    if insecure and (root_cert or key or certs_dir):
        _fail("--insecure takes no certificates or keys")
    ca = key_file = None
    if not insecure:
        ca = root_cert or (certs_dir / "ca.pem" if certs_dir else None)
        if ca is None:
            _fail("give --root-cert CA.pem (or --certs DIR), or --insecure for a plaintext SuperLink")
        key_file = key or (certs_dir / "nodes" / name if certs_dir and name else None)
        for what, path in (("CA certificate", ca), ("node key", key_file)):
            if path is not None and not path.is_file():
                _fail(f"{what} {path} not found")
        if key_file is None:
            typer.echo("warning: no node key (--key or --certs DIR --name NAME): a SuperLink with "
                       "node authentication will refuse this node", err=True)
    extra: dict[str, C.ConfigValue] = {} if trainer == "auto" else {"trainer": trainer}
    for item in node_config or []:
        k, sep, v = item.partition("=")
        if not sep:
            _fail(f"--node-config {item!r}: expected key=value")
        extra[k.strip()] = _parse_value(v.strip())
    from .procs import DeployError, bin_dir, flower_executable

    try:
        argv = C.supernode_argv(
            superlink=superlink, root_certificates=str(ca.resolve()) if ca else None,
            auth_private_key=str(key_file.resolve()) if key_file else None,
            node_config=C.partition_node_config(partition_id, num_partitions, extra), appio_port=port,
            max_retries=max_retries, max_wait_time=max_wait_time,
            executable=flower_executable("flower-supernode"))
    except (ValueError, DeployError) as err:
        _fail(str(err))
    home = flwr_home or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    env = C.venv_env(bin_dir(), str(home))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):  # small devices: no BLAS over-subscription
        env.setdefault(var, "1")
    typer.echo("exec " + shlex.join(argv), err=True)
    if dry_run:
        raise typer.Exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    home.mkdir(parents=True, exist_ok=True)
    os.execve(argv[0], argv, env)  # signals (systemd, Ctrl-C) now go straight to flower-supernode


@app.command("export-data")
def export_data(
    config: Path = typer.Argument(..., help="experiment YAML"),
    out: Path = typer.Argument(..., help="the .npz file to write"),
    set_: list[str] | None = typer.Option(None, "--set", help="override a field: key.sub=value"),
) -> None:
    """Write the config's dataset (after its train/test split) as an .npz for edge devices.

    With `--set data.name=npz --set data.path=OUT` every client gets the same examples
    as with the original dataset (same split, same partition).
    """
    from fedsim.config import ConfigError, load_config
    from fedsim.data.datasets import load_dataset
    from fedsim.data.npz import write_npz

    try:
        cfg = load_config(config, set_ or [])
        ds = load_dataset(cfg.data, cfg.seed)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    if getattr(ds, "natural", False):
        _fail(f"dataset {cfg.data.name!r} comes split by client (natural): it has no single training set to "
              f"export; each device loads it from data.path itself (see docs/datasets.md)")
    write_npz(out, ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    typer.echo(f"{out}: {len(ds.y_train)} train and {len(ds.y_test)} test examples of shape "
               f"{ds.input_shape}, {ds.num_classes} classes ({out.stat().st_size / 1e6:.1f} MB)")
    typer.echo(f"copy it to every device, same path, and use --set data.name=npz --set data.path={out.resolve()}")
