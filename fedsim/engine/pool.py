"""The worker-pool backend: many virtual clients on a few long-lived Ray actors.

Flower's simulation engine makes one virtual SuperNode per client and pumps every
message through a link state that each node polls: start-up grows with the square of
the clients and a round costs a Ray task per client. Here, as in FLUTE and
pfl-research, K workers are decoupled from P clients: :class:`PoolGrid` is a Flower
``Grid`` whose nodes are virtual clients spread over K Ray actors
(:class:`PoolWorker`), each of which runs the same ClientApp
(``fedsim.clients.app:app``) for its clients one after another.

- **Start-up** is O(clients) in small integers: the simulation knows every client's
  partition size (:func:`fedsim.data.datasets.client_sizes`), so the grid hands the
  server its node -> client map (:meth:`PoolGrid.client_map`) and no message goes to
  every node before round 1. Deployments keep their discovery round.
- **Messages**: each distinct ``ArrayRecord`` of a round (the global model) is
  serialised once and put in Ray's object store once; every worker that has clients
  in the round reads it once and shares it between them. The rest of each message
  (configs, metrics: small) travels as Flower's protobuf bytes. Replies come back as
  Flower's protobuf bytes too, so the server sees and counts what would have crossed
  the wire, and nothing from a worker is unpickled by fedsim.
- **Per-client state** (``Context.state``: error-feedback memory, momentum, EF21's
  g_i) lives on the worker that ran the client when the state appeared, in a
  :class:`fedsim.state.SpillStore` capped at ``simulation.state_memory_mb`` (split
  over the workers) that spills the least recently used clients to ``.npz`` files
  under the run directory. A client with state is always sent back to its worker.
- **Balance**: a round's stateless clients go to the least loaded worker, largest
  first (longest-processing-time rule on the partition sizes).
- **Failures**: a worker that dies mid-round (``kill -9``) is restarted by Ray; the
  clients it had in flight get a failed reply naming the cause; the run goes on. Their
  state on that worker is lost (they start afresh, as a phone that was reset).
- **Order**: replies are returned in the order the messages were sent, whatever
  worker ran them, so results equal the in-process backend's bit for bit.

Ray cluster: ``simulation.ray_address`` (or ``RAY_ADDRESS``) connects to an existing
cluster and the workers are spread over its nodes (Ray's ``SPREAD`` scheduling).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.app.message import make_message

from fedsim.config import Config
from fedsim.keys import NUM_PARTITIONS, PARTITION_ID

from .inprocess import LocalGrid

log = logging.getLogger("fedsim")

CLIENT_APP = "fedsim.clients.app:app"
ERROR_CODE = 0
CONNECT_TIMEOUT_S = 5.0
# Work units a client costs beyond its examples (message handling, encoding): the
# balancing rule's estimate of a client's time is examples * epochs + this.
FIXED_COST = 32.0
RESTART_WAIT_S = 120.0

if TYPE_CHECKING:
    # ray.method with no options returns the method itself; to a type checker it gives the
    # method a typed ``.remote``. Ray is imported only where it runs, not with this module.
    from ray import method as remote_method
else:
    _F = TypeVar("_F")

    def remote_method(method: _F) -> _F:
        return method


def node_id(client: int) -> int:
    """The node id of a virtual client (not the client id: the two must never be confused)."""
    return 1000 + 7 * client


class PoolSetupError(RuntimeError):
    """The pool could not start (e.g. no Ray cluster at the address given)."""


# --------------------------------------------------------------------------- worker


class PoolWorker:
    """One Ray actor: runs the ClientApp for the clients it is sent, keeps their state.

    Parameters
    ----------
    index : int
        This worker's index in the pool.
    num_clients : int
        The number of clients (``num-partitions`` in every node config).
    state_dir : str
        Directory for spilled client state (cleared at start).
    state_max_bytes : int
        Memory cap of this worker's client state.
    warm : tuple of (str, int), optional
        (DataConfig JSON, seed): the data to load before the first round.
    client_app : str
        ``"module:attr"`` of the ClientApp.
    """

    def __init__(self, index: int, num_clients: int, state_dir: str, state_max_bytes: int,
                 warm: tuple[str, int] | None = None, client_app: str = CLIENT_APP) -> None:
        import importlib
        import shutil

        from flwr.supercore.task_identity import TaskIdentity

        from fedsim.state import SpillStore

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        module, _, attr = client_app.partition(":")
        self.app = getattr(importlib.import_module(module), attr)
        self.index = index
        self.num_clients = num_clients
        shutil.rmtree(state_dir, ignore_errors=True)
        self.store = SpillStore(state_dir, state_max_bytes)
        if warm is not None:  # import torch and load the data now, not in round 1
            from fedsim.clients import torch_trainer  # noqa: F401
            from fedsim.config import DataConfig
            from fedsim.data.datasets import client_sizes, load_dataset

            data = DataConfig.model_validate_json(warm[0])
            load_dataset(data, warm[1])
            client_sizes(data, warm[1])

    @remote_method
    def ready(self) -> tuple[int, str]:
        """(pid, Ray node id): the worker is up."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    @remote_method
    def run(self, batch: list[tuple[int, bytes, list[tuple[str, int]]]],
            *blobs: bytes) -> list[tuple[bytes, bool, float]]:
        """Run each (client, message bytes, [(record key, blob index)]) in turn.

        ``blobs`` are the round's serialised ``ArrayRecord``s (Ray resolves them from
        its object store). Returns, per message, (reply bytes, whether the client now
        holds state, seconds in the ClientApp).
        """
        from flwr.common.serde import array_record_from_proto, message_from_proto, message_to_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage
        from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord

        from fedsim.state import context_arrays

        records = [array_record_from_proto(ProtoArrayRecord.FromString(b)) for b in blobs]
        out = []
        for client, body, shared in batch:
            msg = message_from_proto(ProtoMessage.FromString(body))
            for key, i in shared:
                msg.content[key] = records[i]  # one record shared by this batch's clients, read only
            t0 = time.perf_counter()
            try:  # one client's fault (in its task, or in the state it left) fails that client only
                context = Context(run_id=1, node_id=node_id(client),
                                  node_config={PARTITION_ID: client, NUM_PARTITIONS: self.num_clients},
                                  state=self._state_of(client), run_config={})
                reply = self.app(msg, context)
                self.store.put(client, context_arrays(context.state))
            except Exception as err:  # what a SuperNode does with a raising ClientApp
                reply = Message(Error(code=ERROR_CODE, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            seconds = time.perf_counter() - t0
            out.append((message_to_proto(reply).SerializeToString(), client in self.store, seconds))
        return out

    def _state_of(self, client: int) -> RecordDict:
        from fedsim.wire import to_record

        return RecordDict({key: to_record(arrays) for key, arrays in self.store.get(client).items()})

    @remote_method
    def state_stats(self) -> dict[str, int]:
        s = self.store
        return {"clients": len(s), "bytes_in_memory": s.bytes_in_memory, "spills": s.spills, "restores": s.restores}

    @remote_method
    def save_states(self, directory: str) -> list[int]:
        """Write every client's state as ``<directory>/client-<id>.npz``; return the clients."""
        return self.store.export(directory)

    @remote_method
    def load_states(self, directory: str, clients: list[int]) -> int:
        """Take the states of ``clients`` from ``<directory>/client-<id>.npz``."""
        from fedsim.state import read_state

        for client in clients:
            self.store.put(client, read_state(Path(directory) / f"client-{client}.npz"))
        return len(clients)


# --------------------------------------------------------------------------- grid


@dataclass
class PoolStats:
    """What the pool did: client calls and seconds, rounds, worker failures (for profiling)."""

    client_calls: int = 0
    client_s: float = 0.0  # seconds inside the ClientApp, summed over clients
    rounds: int = 0
    round_s: list[float] = field(default_factory=list)  # wall seconds of each send_and_receive
    worker_failures: int = 0


@dataclass
class _Batch:
    worker: int
    ref: Any
    messages: list[Message]


def assign(clients: Iterable[int], workers: int, cost: Callable[[int], float],
           owner: dict[int, int]) -> dict[int, int]:
    """client -> worker: clients with an owner go to it; the rest, largest first, to the
    least loaded worker (ties: the lowest index). Deterministic."""
    loads = [0.0] * workers
    out: dict[int, int] = {}
    free = []
    for c in clients:
        if c in owner:
            out[c] = owner[c]
            loads[owner[c]] += cost(c)
        else:
            free.append(c)
    heap = [(load, w) for w, load in enumerate(loads)]
    heapq.heapify(heap)
    for c in sorted(free, key=lambda c: (-cost(c), c)):
        load, w = heapq.heappop(heap)
        out[c] = w
        heapq.heappush(heap, (load + cost(c), w))
    return out


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, with one line, when nothing listens at a Ray ``host:port``."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise PoolSetupError(f"simulation.ray_address {address!r}: expected 'auto' or host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise PoolSetupError(f"no Ray cluster at {address} ({err.strerror or err}); start one with "
                             f"`ray start --head` or fix simulation.ray_address") from None


def init_ray(cfg: Config, run_dir: Path) -> None:
    """Start Ray on this machine, or connect to the cluster at ``simulation.ray_address``."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.simulation.ray_address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False,
                              "configure_logging": True}
    if address:
        check_address(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, TimeoutError) as err:
            raise PoolSetupError(f"cannot connect to the Ray cluster at {address}: "
                                 f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    else:
        ray.init(num_cpus=os.cpu_count() or 1, **kwargs)


class PoolGrid(LocalGrid):
    """A Flower ``Grid`` of ``num_clients`` virtual clients over K Ray actors.

    Parameters
    ----------
    cfg : Config
        The experiment (data, seed, simulation settings).
    run_dir : Path
        The run directory (spilled client state goes under ``client-state/``).
    say : callable, optional
        Where start-up progress lines go (default: the ``fedsim`` logger).
    client_app : str
        ``"module:attr"`` of the ClientApp the workers run.
    """

    def __init__(self, cfg: Config, run_dir: Path, say: Callable[[str], None] | None = None,
                 client_app: str = CLIENT_APP) -> None:
        import ray
        from flwr.supercore.task_identity import TaskIdentity

        from fedsim.data.datasets import client_sizes

        # What a ServerApp process has set before its main runs (Message() reads it).
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        self.say = say or log.info
        self.num_clients = n = cfg.data.num_clients
        t0 = time.perf_counter()
        self.sizes = client_sizes(cfg.data, cfg.seed)
        self.epochs = cfg.train.local_epochs
        init_ray(cfg, run_dir)
        sim = cfg.simulation
        cpus = sim.num_cpus_per_client
        k = sim.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
        self.workers_n = k
        state_cap = int(sim.state_memory_mb * 2**20 / k)
        remote = ray.remote(PoolWorker).options(
            num_cpus=cpus, num_gpus=sim.num_gpus_per_worker, max_restarts=-1, max_task_retries=0,
            scheduling_strategy="SPREAD")
        warm = (cfg.data.model_dump_json(), cfg.seed)
        self.state_root = run_dir / "client-state"
        self.workers = [remote.remote(i, n, str(self.state_root / f"worker-{i}"), state_cap, warm, client_app)
                        for i in range(k)]
        # The workers import torch and load the data while the server does the same;
        # the grid waits for them when it is first used (wait_ready).
        self._pending_ready = {w.ready.remote(): i for i, w in enumerate(self.workers)}
        self.pids: dict[int, int] = {}
        self.ray_nodes: dict[int, str] = {}  # worker -> the Ray node it runs on
        self._t0 = t0
        self.startup_s: float | None = None
        self.owner: dict[int, int] = {}  # client -> the worker holding its state
        self.stats = PoolStats()
        self._ids = itertools.count(1)
        self._inflight: list[_Batch] = []
        self._replies: dict[str, Message] = {}
        self._restarting: set[int] = set()
        self.on_dispatch: Callable[[PoolGrid], None] | None = None  # test hook: called after a round is sent

    def wait_ready(self) -> None:
        """Block until every worker has started (a line as each one is ready)."""
        import ray

        pending = self._pending_ready
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            self.pids[i], self.ray_nodes[i] = ray.get(done[0])
            self.say(f"workers {len(self.pids)}/{self.workers_n} ready, {self.num_clients:,} clients")
        if self.startup_s is None:
            self.startup_s = time.perf_counter() - self._t0

    # -- the node <-> client map the server would otherwise discover ------------------
    def client_map(self) -> tuple[dict[int, int], dict[int, int]]:
        """(node id -> client id, client id -> number of examples), without any message."""
        self.wait_ready()
        nodes = {node_id(c): c for c in range(self.num_clients)}
        return nodes, {c: int(s) for c, s in enumerate(self.sizes)}

    # -- Grid --------------------------------------------------------------------------
    nodes_fixed = True  # virtual clients never leave: the wrapper need not ask for the nodes each round

    def get_node_ids(self) -> Iterable[int]:
        return [node_id(c) for c in range(self.num_clients)]

    def _cost(self, client: int) -> float:
        return float(self.sizes[client]) * self.epochs + FIXED_COST

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        import ray
        from flwr.common.serde import array_record_to_proto, message_to_proto

        msgs = list(messages)
        self.wait_ready()
        self._await_restarts()
        ids = []
        for msg in msgs:
            mid = f"p{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            ids.append(mid)
        clients = [self._client(m.metadata.dst_node_id) for m in msgs]
        plan = assign(clients, self.workers_n, self._cost, self.owner)
        blob_refs: dict[int, Any] = {}  # id(record) -> object ref of its serialised bytes
        items: dict[int, list[tuple[int, bytes, list[tuple[str, int]]]]] = {}
        worker_blobs: dict[int, dict[int, int]] = {}  # worker -> id(record) -> its index in the call
        worker_msgs: dict[int, list[Message]] = {}
        for msg, client in zip(msgs, clients):
            w = plan[client]
            blobs = worker_blobs.setdefault(w, {})
            light = RecordDict()
            shared = []
            for key, rec in msg.content.items():
                if isinstance(rec, ArrayRecord):
                    if id(rec) not in blob_refs:
                        blob_refs[id(rec)] = ray.put(array_record_to_proto(rec).SerializeToString())
                    shared.append((key, blobs.setdefault(id(rec), len(blobs))))
                else:
                    light[key] = rec
            body = message_to_proto(make_message(msg.metadata, light)).SerializeToString()
            items.setdefault(w, []).append((client, body, shared))
            worker_msgs.setdefault(w, []).append(msg)
        for w, batch in items.items():
            refs = [blob_refs[rid] for rid in worker_blobs[w]]  # dicts keep insertion order = index
            ref = self.workers[w].run.remote(batch, *refs)
            self._inflight.append(_Batch(w, ref, worker_msgs[w]))
        if self.on_dispatch is not None:
            self.on_dispatch(self)
        return ids

    def _client(self, node: int) -> int:
        client, rem = divmod(node - 1000, 7)
        if rem or not 0 <= client < self.num_clients:
            raise ValueError(f"no virtual client has node id {node}")
        return client

    def _collect(self, timeout: float | None) -> None:
        """Wait (up to ``timeout`` s) for the batches in flight; file their replies."""
        import ray
        from flwr.common.serde import message_from_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._inflight:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait([b.ref for b in self._inflight], num_returns=1, timeout=left)
            if not done:
                break  # timed out: the rest get no reply
            batch = next(b for b in self._inflight if b.ref == done[0])
            self._inflight.remove(batch)
            try:
                results = ray.get(batch.ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError) as err:
                self._worker_died(batch, err)
                continue
            except ray.exceptions.RayTaskError as err:  # the worker's batch code raised: its clients fail
                self._fail_batch(batch, f"worker {batch.worker} could not run its batch: "
                                        f"{' '.join(str(err.cause).split())[:300]}")
                continue
            for msg, (body, has_state, seconds) in zip(batch.messages, results):
                client = self._client(msg.metadata.dst_node_id)
                if has_state:
                    self.owner[client] = batch.worker
                else:
                    self.owner.pop(client, None)
                self.stats.client_calls += 1
                self.stats.client_s += seconds
                self._replies[msg.metadata.message_id] = message_from_proto(ProtoMessage.FromString(body))

    def _fail_batch(self, batch: _Batch, reason: str) -> None:
        """Every client of ``batch`` gets a failed reply with ``reason``."""
        log.warning("%s: %d clients failed", reason, len(batch.messages))
        for msg in batch.messages:
            self._replies[msg.metadata.message_id] = Message(Error(code=ERROR_CODE, reason=reason), reply_to=msg)

    def _worker_died(self, batch: _Batch, err: Exception) -> None:
        w = batch.worker
        self.stats.worker_failures += 1
        self._fail_batch(batch, f"worker {w} died mid-round ({type(err).__name__}); Ray restarts it; "
                                f"the state of its clients is lost")
        self.owner = {c: o for c, o in self.owner.items() if o != w}
        self._restarting.add(w)

    def _await_restarts(self) -> None:
        """Wait until the workers Ray is restarting answer again (calls sent earlier fail)."""
        import ray

        for w in sorted(self._restarting):
            deadline = time.monotonic() + RESTART_WAIT_S
            while True:
                try:
                    self.pids[w], self.ray_nodes[w] = ray.get(self.workers[w].ready.remote(), timeout=10)
                    break
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"pool worker {w} did not come back within {RESTART_WAIT_S:.0f} s "
                                           f"of its restart") from None
                    time.sleep(0.2)
            log.warning("worker %d restarted (pid %d)", w, self.pids[w])
        self._restarting.clear()

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._collect(timeout=0.0)
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        t0 = time.perf_counter()
        ids = list(self.push_messages(messages))
        self._collect(timeout)
        for batch in self._inflight:  # late: not waited for again; state they may still write stays put
            for msg in batch.messages:
                self.owner[self._client(msg.metadata.dst_node_id)] = batch.worker
        self._inflight.clear()
        out = [self._replies.pop(m) for m in ids if m in self._replies]
        self.stats.rounds += 1
        self.stats.round_s.append(time.perf_counter() - t0)
        return out

    # -- client state, for checkpoints --------------------------------------------------
    def save_client_states(self, directory: Path) -> int:
        """Write every client's state as ``<directory>/client-<id>.npz``; return the count."""
        import ray

        directory.mkdir(parents=True, exist_ok=True)
        self._await_restarts()
        return sum(len(c) for c in ray.get([w.save_states.remote(str(directory)) for w in self.workers]))

    def load_client_states(self, directory: Path) -> int:
        """Restore the states :meth:`save_client_states` wrote, each client to its worker."""
        import ray

        self.wait_ready()
        self._await_restarts()
        clients = sorted(int(p.stem.split("-", 1)[1]) for p in Path(directory).glob("client-*.npz"))
        clients = [c for c in clients if 0 <= c < self.num_clients]
        per: dict[int, list[int]] = {}
        for c in clients:
            w = self.owner.get(c, c % self.workers_n)
            per.setdefault(w, []).append(c)
            self.owner[c] = w
        return sum(ray.get([self.workers[w].load_states.remote(str(directory), cs) for w, cs in per.items()]))

    def state_stats(self) -> list[dict[str, int]]:
        import ray

        self._await_restarts()
        return list(ray.get([w.state_stats.remote() for w in self.workers]))

    def refresh(self) -> None:
        """Ask every worker for its pid and node again (after a restart)."""
        import ray

        self.wait_ready()
        for i, (pid, node) in enumerate(ray.get([w.ready.remote() for w in self.workers])):
            self.pids[i], self.ray_nodes[i] = pid, node

    def shutdown(self) -> None:
        """End the workers and remove spilled client state (Ray itself is left to the caller)."""
        import shutil

        import ray

        for w in self.workers:
            # Ray types a handle as ActorHandle | type[PoolWorker] so that its methods type-check;
            # at run time it is the ActorHandle that kill takes
            ray.kill(w)  # type: ignore[arg-type]
        self.workers = []
        shutil.rmtree(self.state_root, ignore_errors=True)
