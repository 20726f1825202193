"""An in-process grid: the real ClientApp, called directly, one node after another.

No Ray, no SuperLink: every message goes to ``client_app(message, context)`` in this
process, with one persistent Flower ``Context`` per node (so client state survives
across rounds exactly as in Flower's simulation). Messages and replies still pass
through Flower's serialization (each is deflated and inflated), so what the server
sees is what would have crossed the wire. For tests, debugging and the benchmarks;
it is the ``simulation.backend: inprocess`` option of ``fedsim run``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.app.message import make_message
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedsim.keys import NUM_PARTITIONS, PARTITION_ID
from fedsim.state import context_arrays, read_state, write_state
from fedsim.wire import to_record

if TYPE_CHECKING:
    from flwr.supercore.run import Run

_ERROR_CODE = 0


def _roundtrip(msg: Message) -> Message:
    """Serialize and deserialize a message's content the way Flower's transport does."""
    if msg.has_error():
        return msg
    content = RecordDict.inflate(msg.content.deflate(), children=_children(msg.content))
    return make_message(msg.metadata, content)


def _children(obj: Any) -> dict[str, Any] | None:
    kids = obj.children
    if not kids:
        return None
    out = {}
    for oid, child in kids.items():
        out[oid] = type(child).inflate(child.deflate(), children=_children(child))
    return out


class LocalGrid(Grid):
    """What fedsim's simulated grids share: no run to set, messages made directly."""

    def set_run(self, run: Run) -> None:  # pragma: no cover - nothing to do
        pass

    @property
    def run(self) -> Any:  # pragma: no cover
        return None

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # pragma: no cover - unused by fedsim
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)


class InProcessGrid(LocalGrid):
    """A grid of ``num_nodes`` nodes whose ClientApp runs in this process."""

    def __init__(self, client_app: Any, num_nodes: int, node_config: dict[int, dict[str, Any]] | None = None,
                 run_config: dict[str, Any] | None = None, serialize: bool = True) -> None:
        self.client_app = client_app
        self.serialize = serialize
        # What a ServerApp process has set before its main runs (Message() reads it).
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
        self._ids = itertools.count(1)
        self.node_ids = [1000 + 7 * i for i in range(num_nodes)]  # not 0..n-1: ids are not partition ids
        self.contexts = {
            node: Context(run_id=1, node_id=node,
                          node_config=(node_config or {}).get(i, {PARTITION_ID: i, NUM_PARTITIONS: num_nodes}),
                          state=RecordDict(), run_config=dict(run_config or {}))
            for i, node in enumerate(self.node_ids)
        }
        self._replies: dict[str, Message] = {}
        self.down: set[int] = set()  # nodes that never answer (tests of failures)
        self.dead: set[int] = set()  # nodes whose SuperLink answers "node unavailable" for them

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            if node in self.down:
                continue
            if node in self.dead:  # as a SuperLink does: an error reply whose source is itself
                reply = Message(Error(code=_ERROR_CODE, reason="Node unavailable"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = 1
                self._replies[mid] = reply
                ids.append(mid)
                continue
            if self.serialize:
                msg = _roundtrip(msg)
            try:
                reply = self.client_app(msg, self.contexts[node])
            except Exception as err:  # what a SuperNode does with a raising ClientApp
                reply = Message(Error(code=_ERROR_CODE, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            self._replies[mid] = _roundtrip(reply) if self.serialize else reply
            ids.append(mid)
        return ids

    # -- client state (checkpoints) ---------------------------------------------------
    def _client_contexts(self) -> dict[int, Context]:
        """Client (partition) id -> that node's Context."""
        return {int(ctx.node_config[PARTITION_ID]): ctx for ctx in self.contexts.values()}

    def save_client_states(self, directory: Path) -> int:
        """Write every client's non-empty ``Context.state`` arrays as ``<directory>/client-<id>.npz``
        (the id is the partition id; the format of :func:`fedsim.state.write_state`, as the pool
        backend writes them); return the count."""
        n = 0
        for cid, ctx in sorted(self._client_contexts().items()):
            kept = context_arrays(ctx.state)
            if kept:
                write_state(Path(directory) / f"client-{cid}.npz", kept)
                n += 1
        return n

    def load_client_states(self, directory: Path) -> int:
        """Give each client the state :meth:`save_client_states` wrote for it; return the count."""
        contexts = self._client_contexts()
        n = 0
        for path in sorted(Path(directory).glob("client-*.npz")):
            m = re.fullmatch(r"client-(\d+)\.npz", path.name)
            if m is None or int(m.group(1)) not in contexts:
                raise ValueError(f"{str(path)!r} names no client of this grid")
            state = contexts[int(m.group(1))].state
            for key, arrays in read_state(path).items():
                state[key] = to_record(arrays)
            n += 1
        return n

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
