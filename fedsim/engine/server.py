"""The ServerApp's body: discovery, the round loop, server-side evaluation, metrics.

After every round the loop keeps ``status.json`` current (:mod:`fedsim.runstatus`),
saves the best model so far (``model-best.npz``, by test accuracy) and, every
``checkpoint.every`` rounds, a checkpoint (:mod:`fedsim.checkpoint`); at the end it
saves ``model-final.npz``. A run directory that holds a checkpoint is continued from it
(``fedsim run --resume RUN_DIR``) instead of starting at round 0.

The loop calls the strategy through Flower's ``Strategy`` interface only
(``configure_train`` -> ``Grid.send_and_receive`` -> ``aggregate_train``), as
``Strategy.start`` does, so any Flower strategy runs; fedsim's own loop adds the
discovery of client ids, seeded sampling, the progress display and the metrics rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim import checkpoint
from fedsim.attacks.base import attacker_ids
from fedsim.checkpoint import Part, save_arrays
from fedsim.config import ClientSpec, Config
from fedsim.keys import CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID, SPEC_KEY, TRAIN_LOSS
from fedsim.metrics import Recorder, summarize
from fedsim.registry import CODECS, STRATEGIES
from fedsim.runstatus import write_status

from .failure import FailurePolicy
from .wrapper import FedsimWrapper

log = logging.getLogger("fedsim")

NODE_WAIT_S = 300.0


def wait_for_nodes(grid: Grid, n: int, timeout: float = NODE_WAIT_S, poll: float = 0.2) -> list[int]:
    """Block until ``n`` nodes are registered (Flower may start before all are)."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {n} nodes registered within {timeout:.0f} s")
        time.sleep(poll)


def discover(grid: Grid, nodes: list[int], timeout: float, spec_json: str | None = None,
             sizes: dict[int, int] | None = None, num_clients: int | None = None) -> dict[int, int]:
    """Ask every node for its client id (``partition-id``); return node -> client.

    Given the client spec, each node also reports its number of examples (into ``sizes``).
    A reply is used only if its id is an integer in ``[0, num_clients)``; an id that two
    nodes claim is given to neither (which one is honest cannot be told). Every refusal
    is logged with its reason; discovery itself never fails on a bad reply.
    """
    def content() -> RecordDict:
        return RecordDict({CONFIG: ConfigRecord({SPEC_KEY: spec_json})}) if spec_json else RecordDict()

    def whole(value: object) -> int | None:
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        return None

    msgs = [Message(content(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    claims: dict[int, list[int]] = {}  # client id -> nodes claiming it
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %d did not answer discovery: %s", node, reply.error.reason)
            continue
        rec = reply.content.metric_records.get(METRICS)
        cid = whole(rec.get(PARTITION_ID)) if rec is not None else None
        if rec is None or cid is None or cid < 0 or (num_clients is not None and cid >= num_clients):
            log.warning("node %d: discovery reply refused (partition-id %r)", node,
                        None if rec is None else rec.get(PARTITION_ID))
            continue
        claims.setdefault(cid, []).append(node)
        n_ex = whole(rec.get(NUM_EXAMPLES))
        if sizes is not None and n_ex is not None and n_ex >= 0:
            sizes[cid] = n_ex
    mapping: dict[int, int] = {}
    for cid, claimants in claims.items():
        if len(claimants) > 1:
            log.warning("partition-id %d is claimed by nodes %s: none of them is used", cid, sorted(claimants))
            if sizes is not None:
                sizes.pop(cid, None)
            continue
        mapping[claimants[0]] = cid
    return mapping


def client_map(grid: Grid, cfg: Config, spec_json: str) -> tuple[dict[int, int], dict[int, int]]:
    """(node -> client id, client id -> examples): from the grid when it knows them (the
    pool backend: no message before round 1), else by a discovery round."""
    known = getattr(grid, "client_map", None)
    if known is not None:
        return known()
    n = cfg.data.num_clients
    nodes = wait_for_nodes(grid, n)
    sizes: dict[int, int] = {}
    mapping = discover(grid, nodes, timeout=cfg.simulation.round_timeout, spec_json=spec_json, sizes=sizes,
                       num_clients=n)
    return mapping, sizes


def build_wrapper(cfg: Config) -> FedsimWrapper:
    """The inner strategy from the registry, wrapped with fedsim's wire."""
    inner = STRATEGIES.build(cfg.strategy.name, cfg.strategy.params)
    codec = CODECS.build(cfg.codec.name, cfg.codec.params)
    attackers = {}
    if cfg.attack is not None:
        ids = cfg.attack.clients if cfg.attack.clients is not None else attacker_ids(
            cfg.seed, cfg.data.num_clients, cfg.attack.count)
        attackers = {i: cfg.attack for i in ids}
    network = None
    if cfg.network is not None:
        from fedsim.network import NetworkModel

        network = NetworkModel(cfg.network, cfg.seed, cfg.data.num_clients)
    return FedsimWrapper(inner, codec, ClientSpec.from_config(cfg).to_json(), cfg.seed, cfg.clients_per_round,
                         attackers=attackers, max_payload_ratio=cfg.simulation.max_payload_ratio,
                         network=network, epochs=cfg.train.local_epochs, validation=cfg.validation)


class Evaluator:
    """Server-side evaluation of the global model on the held-out test set."""

    def __init__(self, cfg: Config) -> None:
        from fedsim.data.datasets import load_dataset
        from fedsim.models import build_model

        self.ds = load_dataset(cfg.data, cfg.seed)
        self.model = build_model(cfg.model.name, cfg.model.params, self.ds.input_shape, self.ds.num_classes, cfg.seed)

    def training_flops_per_sample(self) -> float:
        """3x the forward FLOPs of one example (forward + backward), counted by torch."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.model(torch.from_numpy(self.ds.x_test[:1]))
        return 3.0 * float(counter.get_total_flops())

    def initial_arrays(self) -> ArrayRecord:
        return ArrayRecord(self.model.state_dict())

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        from fedsim.clients import torch_trainer as tt

        tt.set_weights(self.model, arrays.to_numpy_ndarrays())
        return tt.evaluate(self.model, self.ds.x_test, self.ds.y_test)


Progress = Callable[[dict[str, Any]], None]


def run_server(grid: Grid, cfg: Config, run_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run every round of ``cfg`` on ``grid``; write metrics into ``run_dir``; return the summary."""
    evaluator = Evaluator(cfg)
    wrapper = build_wrapper(cfg)
    mapping, sizes = client_map(grid, cfg, wrapper.spec_json)
    if len(mapping) < cfg.clients_per_round:
        raise RuntimeError(f"only {len(mapping)} clients answered discovery; need {cfg.clients_per_round}")
    wrapper.bind_nodes(mapping, sizes)
    if wrapper.network is not None:
        wrapper.flops_per_sample = evaluator.training_flops_per_sample()
    wrapper.evaluator = evaluator  # strategies with per-client models evaluate them through it

    start = resume_or_start(grid, cfg, run_dir, wrapper, evaluator)
    arrays, recorder = start.arrays, start.recorder
    t_start = time.perf_counter() - start.wall_time
    policy = FailurePolicy.from_config(cfg.failure)
    saved = [-float("inf")]  # wall time of the last checkpoint
    try:
        for rnd in range(start.round + 1, cfg.rounds + 1):
            msgs = wrapper.configure_train(rnd, arrays, ConfigRecord(), grid)
            replies = grid.send_and_receive(msgs, timeout=cfg.simulation.round_timeout)
            new_arrays, train_metrics = wrapper.aggregate_train(rnd, replies)
            if new_arrays is not None:
                arrays = new_arrays
            s = wrapper.stats
            loss = train_metrics.get(TRAIN_LOSS) if train_metrics else None
            row: dict[str, Any] = {
                "round": rnd,
                "train_loss": float(loss) if isinstance(loss, int | float) else None,
                "sampled": s.sampled, "replied": s.replied, "rejected": s.rejected, "failed": s.failed,
                "model_refused": s.model_refused,
                "no_reply": s.sampled - s.replied - s.rejected - s.failed,
                "bytes_up": s.bytes_up, "bytes_down": s.bytes_down,
                **s.network,
            }
            # a strategy may report more per round (e.g. bits per coordinate, honest-model accuracy)
            row.update(getattr(wrapper.inner, "round_metrics", None) or {})
            if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
                row["test_loss"], row["test_accuracy"] = evaluator(arrays)
            else:
                row["test_loss"] = row["test_accuracy"] = None
            row["wall_time"] = time.perf_counter() - t_start
            row = recorder.round(row, s.clients)
            log_missing(rnd, s.clients, cfg.simulation.round_timeout)
            end_of_round(cfg, run_dir, rnd, arrays, row, recorder.rows, wrapper, grid, saved)
            if progress is not None:
                progress(row)
            policy.after_round(rnd, s.clients, model_updated=new_arrays is not None)  # RunFailed past a limit
    except BaseException as err:
        write_status(run_dir, "failed", len(recorder.rows) - 1, cfg.rounds, f"{type(err).__name__}: {err}"[:500])
        raise
    finally:
        recorder.close()
    summary = summarize(recorder.rows, cfg.target_accuracy)
    import json

    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    save_arrays(run_dir / FINAL_MODEL, arrays)
    write_status(run_dir, "finished", cfg.rounds, cfg.rounds)
    return summary


# --------------------------------------------------------------------------- checkpoints

FINAL_MODEL = "model-final.npz"
BEST_MODEL = "model-best.npz"


REDISCOVERED = frozenset({"_client_to_node", "_known", "num_examples"})  # the wrapper's, from the client map


@dataclass
class Start:
    """Where the round loop starts: the model, the last completed round, the recorder."""

    arrays: ArrayRecord
    round: int
    recorder: Recorder
    wall_time: float = 0.0


def checkpoint_parts(wrapper: FedsimWrapper, grid: Grid) -> dict[str, Part]:
    """What a checkpoint holds besides the model: the strategy in full (everything but the
    wrapper, codec, evaluator and grid it points to), and the plain counters and clock of
    the wrapper and of the network model (not what discovery finds again: node ids change
    from one start to the next)."""
    skip = (wrapper, wrapper.codec, wrapper.evaluator, grid, wrapper.network)
    none: frozenset[str] = frozenset()
    # the wrapper first: on resume its prepare_resume has a payload-consuming strategy build
    # what its first round builds, before the strategy's state is restored into it
    parts: dict[str, Part] = {"wrapper": (wrapper, (), True, REDISCOVERED),
                              "strategy": (wrapper.inner, skip, False, none)}
    if wrapper.network is not None:
        parts["network"] = (wrapper.network, (), True, none)
    return parts


def resume_or_start(grid: Grid, cfg: Config, run_dir: Path, wrapper: FedsimWrapper, evaluator: Evaluator) -> Start:
    """Continue from the run directory's last checkpoint if it has one; else evaluate round 0."""
    run_dir.mkdir(parents=True, exist_ok=True)
    found = checkpoint.latest(run_dir)
    if found is None:
        write_status(run_dir, "running", 0, cfg.rounds)
        recorder = Recorder(run_dir)
        arrays = evaluator.initial_arrays()
        loss, acc = evaluator(arrays)
        recorder.round({"round": 0, "test_accuracy": acc, "test_loss": loss, "bytes_up": 0, "bytes_down": 0,
                        "wall_time": 0.0})
        return Start(arrays, 0, recorder)
    parts = {name: part[0] for name, part in checkpoint_parts(wrapper, grid).items()}
    arrays, state = checkpoint.restore_checkpoint(found, parts, grid, checkpoint.codec_is_stateful(wrapper.codec))
    rows, rnd = state["rows"], int(state["round"])
    checkpoint.rewind_run_files(run_dir, rows, rnd)
    recorder = Recorder(run_dir)
    recorder.restore(rows)
    write_status(run_dir, "running", rnd, cfg.rounds)
    log.info("resumed %s from its checkpoint of round %d", run_dir, rnd)
    return Start(arrays, rnd, recorder, float(rows[-1].get("wall_time") or 0.0))


def log_missing(rnd: int, clients: list[Any], timeout: float) -> None:
    """A log line for each client that sent nothing back in time (late, or its node is down).

    Failed clients (an error reply) are logged by the wrapper as their reply arrives."""
    for c in clients:
        if c.status == "no-reply":
            log.warning("round %d: client %d sent no reply within the round timeout of %.0f s (late, or its "
                        "node is down)", rnd, c.client, timeout)


def end_of_round(cfg: Config, run_dir: Path, rnd: int, arrays: ArrayRecord, row: dict[str, Any],
                 rows: list[dict[str, Any]], wrapper: FedsimWrapper, grid: Grid,
                 saved: list[float] | None = None) -> None:
    """After a round's row is written: the best model, the checkpoint, the status file.

    A checkpoint is due every ``checkpoint.every`` rounds, but is skipped when the previous
    one (its wall time in ``saved[0]``) is less than ``checkpoint.min_interval_s`` old, so
    that saving every client's state does not dominate short rounds; the last round always
    saves."""
    acc = row.get("test_accuracy")
    if acc is not None and acc > max((r["test_accuracy"] for r in rows[:-1] if r.get("test_accuracy") is not None),
                                     default=-1.0):
        save_arrays(run_dir / BEST_MODEL, arrays)
    every = cfg.checkpoint.every
    last = saved[0] if saved else -float("inf")
    due = every and (rnd % every == 0 and time.monotonic() - last >= cfg.checkpoint.min_interval_s
                     or rnd == cfg.rounds)
    if due:
        checkpoint.save_checkpoint(run_dir, rnd, arrays, checkpoint_parts(wrapper, grid), grid, {"rows": rows})
        if saved is not None:
            saved[0] = time.monotonic()
    write_status(run_dir, "running", rnd, cfg.rounds)
