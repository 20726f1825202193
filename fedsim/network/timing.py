"""A client's time in one round: latency + download + compute + upload.

Units, kept straight everywhere in this package:

- message sizes in **bytes** (the real byte size of what crosses the wire);
- link throughput in **bits/s** (Mbit/s in configs are multiplied by 10**6 once,
  in :class:`fedsim.network.model.NetworkModel`);
- round-trip latency and every time in **seconds**;
- compute speed in training samples/s (a profile's ms/sample or GFLOP/s is converted
  by :func:`samples_per_second`).

The model is the one FedScale uses (Lai et al., "FedScale: Benchmarking Model and
System Performance of Federated Learning at Scale", ICML 2022: a client's completion
time = computation + communication), with the round trip's latency added once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "ClientTiming", "client_time", "samples_per_second", "training_flops_per_sample",
    "transfer_seconds",
]


def transfer_seconds(nbytes: float, bits_per_s: float) -> float:
    """Seconds to move ``nbytes`` bytes over a link of ``bits_per_s`` bits/s.

    ``t = 8 * nbytes / bits_per_s``; an infinite link takes 0 s.
    """
    if nbytes < 0:
        raise ValueError(f"a message cannot have {nbytes} bytes")
    if not bits_per_s > 0:
        raise ValueError(f"link throughput must be > 0 bits/s; got {bits_per_s}")
    return 8.0 * nbytes / bits_per_s


def training_flops_per_sample(forward_flops: float) -> float:
    """Training FLOPs per sample from the model's forward FLOPs per sample.

    The backward pass costs about twice the forward pass, so one training step costs
    ``3 * forward`` (the factor FedScale applies to inference latency, and the
    2N + 4N = 6N FLOPs per token of Kaplan et al., 2020, Sec. 2.1).
    """
    if not forward_flops > 0:
        raise ValueError(f"forward FLOPs per sample must be > 0; got {forward_flops}")
    return 3.0 * forward_flops


def samples_per_second(
    *,
    samples_per_s: float | None = None,
    ms_per_sample: float | None = None,
    gflops: float | None = None,
    flops_per_sample: float | None = None,
) -> float:
    """Training speed in samples/s from whichever unit a device gives (exactly one).

    ``ms_per_sample``: ``1000 / ms``; ``gflops``: ``gflops * 1e9 / flops_per_sample``
    (``flops_per_sample`` = training FLOPs per sample, see
    :func:`training_flops_per_sample`).
    """
    given = [x is not None for x in (samples_per_s, ms_per_sample, gflops)]
    if sum(given) != 1:
        raise ValueError("give exactly one of samples_per_s, ms_per_sample, gflops")
    if samples_per_s is not None:
        speed = samples_per_s
    elif ms_per_sample is not None:
        speed = math.inf if ms_per_sample == 0 else 1000.0 / ms_per_sample
    else:
        assert gflops is not None
        if flops_per_sample is None or not flops_per_sample > 0:
            raise ValueError(
                "a device whose speed is in GFLOP/s needs the model's training FLOPs per "
                f"sample (about 3x its forward FLOPs); got flops_per_sample={flops_per_sample}"
            )
        speed = gflops * 1e9 / flops_per_sample
    if not speed > 0:
        raise ValueError(f"compute speed must be > 0 samples/s; got {speed}")
    return speed


@dataclass(frozen=True)
class ClientTiming:
    """Seconds a client spends on each leg of a round (it arrives at ``total_s``)."""

    latency_s: float
    download_s: float
    compute_s: float
    upload_s: float

    @property
    def total_s(self) -> float:
        return self.latency_s + self.download_s + self.compute_s + self.upload_s


def client_time(
    *,
    bytes_down: float,
    bytes_up: float,
    num_samples: int,
    epochs: float,
    downlink_bps: float,
    uplink_bps: float,
    rtt_s: float,
    samples_per_s: float,
) -> ClientTiming:
    """A client's time in a round, leg by leg.

    ``T = rtt + 8 B_down / bw_down + n E / speed + 8 B_up / bw_up``

    Parameters
    ----------
    bytes_down, bytes_up : float
        Bytes of the message the server sends and of the client's reply.
    num_samples : int
        Local training samples per epoch.
    epochs : float
        Local epochs (fractional allowed: a fixed number of steps is ``steps * batch /
        num_samples`` epochs).
    downlink_bps, uplink_bps : float
        Link throughput in bits/s (``inf`` allowed).
    rtt_s : float
        Round-trip latency in seconds, paid once: half on the way down, half up.
    samples_per_s : float
        Training speed (``inf`` allowed).
    """
    if num_samples < 0 or epochs < 0:
        raise ValueError(f"num_samples and epochs must be >= 0; got {num_samples}, {epochs}")
    if not rtt_s >= 0:
        raise ValueError(f"round-trip latency must be >= 0 s; got {rtt_s}")
    if not samples_per_s > 0:
        raise ValueError(f"compute speed must be > 0 samples/s; got {samples_per_s}")
    work = float(num_samples) * float(epochs)
    return ClientTiming(
        latency_s=float(rtt_s),
        download_s=transfer_seconds(bytes_down, downlink_bps),
        compute_s=work / samples_per_s,  # n * E / speed
        upload_s=transfer_seconds(bytes_up, uplink_bps),
    )
