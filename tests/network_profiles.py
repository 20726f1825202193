"""Three hand-timed device profiles shared by the network-model tests.

Arrival times for WORK (computed by hand in test_network_timing.py):
A at 12.1 s, B at 17.05 s, C at 5.26 s.
"""

from fedsim.network import ClientWork, NetworkConfig, NetworkModel

# A: 16 Mbit/s down, 8 up, 100 ms, 100 samples/s
# B: 4 down, 1 up, 50 ms, 5 ms/sample (= 200 samples/s)
# C: 100 down, 100 up, 20 ms, 2 GFLOP/s at 1e7 FLOPs/sample (= 200 samples/s)
THREE = {
    "mix": {"A": 1 / 3, "B": 1 / 3, "C": 1 / 3},
    "profiles": {
        "A": {"downlink_mbps": 16, "uplink_mbps": 8, "rtt_ms": 100, "samples_per_s": 100},
        "B": {"downlink_mbps": 4, "uplink_mbps": 1, "rtt_ms": 50, "ms_per_sample": 5},
        "C": {"downlink_mbps": 100, "uplink_mbps": 100, "rtt_ms": 20, "gflops": 2},
    },
}
WORK = ClientWork(bytes_down=2_000_000, bytes_up=1_000_000, num_samples=500, epochs=2,
                  flops_per_sample=1e7)


def three_clients(**extra: object) -> tuple[NetworkModel, dict[str, int]]:
    """A model of three clients, one per profile (exact proportions), and profile -> client."""
    model = NetworkModel(NetworkConfig.model_validate({**THREE, **extra}), seed=7, num_clients=3)
    by_profile = {model.device(c).profile: c for c in range(3)}
    assert sorted(by_profile) == ["A", "B", "C"]
    return model, by_profile
