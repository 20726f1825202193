"""A tiny experiment for the workflow tests: digits, an MLP, 6 clients, in process (no Ray)."""

TINY = {
    "name": "tiny",
    "seed": 0,
    "rounds": 2,
    "clients_per_round": 3,
    "target_accuracy": 0.3,
    "data": {"name": "digits", "num_clients": 6, "partition": {"kind": "iid"}},
    "model": {"name": "mlp", "params": {"hidden": 16}},
    "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
    "strategy": {"name": "fedavg"},
    "codec": {"name": "identity"},
    "simulation": {"backend": "inprocess"},
    "output": {"progress": False, "plots": False},
}
