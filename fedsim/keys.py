"""Every key of fedsim's messages, in one place that the server and the clients both import.

Standard library only (no numpy, no Flower), so that an edge client, a numpy-only module
(:mod:`fedsim.ef21.client`) or a client written against ``docs/wire-format.md`` can use
the same names. :mod:`fedsim.wire` re-exports them next to the code that reads replies.

Records of a message (``RecordDict`` keys)
    :data:`ARRAYS` (the model sent), :data:`CONFIG` (the instruction), :data:`PAYLOAD`
    (the encoded update a client replies with), :data:`METRICS` (the reply's numbers).
Config keys (server -> client)
    ``fedsim.*`` (:data:`SPEC_KEY`, :data:`ROUND_KEY`, :data:`ATTACK_KEY`, :data:`TASK_KEY`,
    :data:`CODEC_KEY`), Flower FedProx's :data:`PROXIMAL_MU_KEY`, and the keys of the
    client tasks ``monna`` (``monna.*``) and ``ef21`` (``ef21.*``); :data:`TRAIN_TASK` is
    the task a message without :data:`TASK_KEY` runs.
Payload keys
    a codec's are ``"<tensor>.<field>"``; EF21's own wires send :data:`EF21_X` or
    :data:`EF21_IDX` + :data:`EF21_VAL`.
Metric keys (client -> server)
    :data:`REPLY_METRICS`; discovery replies carry :data:`PARTITION_ID`,
    :data:`NUM_PARTITIONS` and :data:`NUM_EXAMPLES`, the first two read from the node
    config under the same names.
"""

from __future__ import annotations

# -- records ------------------------------------------------------------------------
ARRAYS = "arrays"
CONFIG = "config"
PAYLOAD = "payload"
METRICS = "metrics"

# -- config keys: every message -------------------------------------------------------
SPEC_KEY = "fedsim.spec"  # JSON of fedsim.config.ClientSpec
ROUND_KEY = "fedsim.round"
ATTACK_KEY = "fedsim.attack"  # JSON of fedsim.config.AttackConfig (Byzantine clients only)
TASK_KEY = "fedsim.task"  # the client task a strategy asks for (default TRAIN_TASK)
TRAIN_TASK = "train"  # the default client task: local SGD, the update encoded with the codec
CODEC_KEY = "fedsim.codec"  # optional per-client codec override: PluginSpec JSON
PROXIMAL_MU_KEY = "proximal-mu"  # what flwr.serverapp.strategy.FedProx puts in the config

# -- config keys: the "monna" client task (strategies/monna.py -> clients/monna.py) -------
MONNA_TASK = "monna"
MONNA_LR_KEY = "monna.lr"
MONNA_BETA_KEY = "monna.beta"
MONNA_STEPS_KEY = "monna.local-steps"

# -- config keys: the "ef21" client task (fedsim.ef21.client.client_config -> clients/ef21.py)
EF21_TASK = "ef21"
EF21_SCALE_KEY = "ef21.scale"
EF21_ACKED_KEY = "ef21.acked"
EF21_DENSE_KEY = "ef21.dense"
EF21_WANT_L_KEY = "ef21.want-L"
EF21_WIRE_KEY = "ef21.wire"
EF21_K_KEY = "ef21.k"
EF21_DTYPE_KEY = "ef21.dtype"
EF21_BATCH_KEY = "ef21.batch"

# -- payload keys: the reply's one packed array (fedsim.packed), holding the keys below
PACKED = "packed"

# -- payload keys: EF21's own wires (fedsim.ef21.wire; the "codec" wire uses "<tensor>.<field>")
EF21_X = "ef21.x"  # the dense message c_i, (d,) float32|float64
EF21_IDX = "ef21.idx"  # Top-k: the kept coordinates, (k,) uint32 ascending
EF21_VAL = "ef21.val"  # Top-k: their values, (k,) float32|float64

# -- metric keys: replies ---------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # the client's number of training examples (FedAvg's weight), > 0
TRAIN_LOSS = "train-loss"  # the mean training loss of the round, finite
STEPS = "steps"  # local SGD steps taken
TRAIN_S = "train-s"  # seconds spent training
ENCODE_S = "encode-s"  # seconds spent encoding the update
NUMPY_TRAINER = "numpy-trainer"  # 1.0 when the numpy (edge) trainer ran, 0.0 for torch
EF21_L = "ef21-L"  # the client's smoothness constant L_i (ef21 task, when asked)
REQUIRED_METRICS = (NUM_EXAMPLES, TRAIN_LOSS)
OPTIONAL_METRICS = (STEPS, TRAIN_S, ENCODE_S, NUMPY_TRAINER, EF21_L)
REPLY_METRICS = REQUIRED_METRICS + OPTIONAL_METRICS  # what a reply's metrics may hold (docs/wire-format.md)

# -- metric keys: discovery replies (also the node config keys a SuperNode is started with)
PARTITION_ID = "partition-id"  # the node's client id
NUM_PARTITIONS = "num-partitions"  # the number of clients
