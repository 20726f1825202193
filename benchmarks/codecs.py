"""Codec speed: DGC's sampled threshold vs exact top-k, and encode + decode throughput.

(a) On one float32 tensor of --size entries at density 0.001 (DGC's, Lin et al., ICLR 2018):
    DGC's sampled selection (numpy, :func:`fedsim.codecs.dgc.select`) against exact
    ``torch.topk`` on |x| and numpy's ``argpartition``: time of each, speedup, and the
    number selected against k (goals: 5x faster than torch.topk, count within +-30% of k).
(b) encode + decode throughput, in GB/s of float32 input (4 * size bytes / time), of every
    codec registered in ``fedsim.registry.CODECS`` built with its default parameters,
    beside ``np.copyto`` of the same tensor as the memory-bandwidth reference. The
    quantizers run their compiled kernels when numba is installed (``benchmarks/quantizers.py``
    compares them with the numpy path).

Usage: ``python benchmarks/codecs.py [--size 10000000] [--repeat 5] [--threads 1]``.
Times are the median of --repeat runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import numpy as np


def timeit(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_threshold(x: np.ndarray, density: float, repeat: int) -> None:
    import torch

    from fedsim.codecs.dgc import select
    from fedsim.codecs.sparse import num_selected, topk_indices

    k = num_selected(x.size, density)
    xt = torch.from_numpy(x)
    rngs = iter(np.random.default_rng(s) for s in range(10**6))
    counts: list[int] = []

    def sampled() -> None:
        counts.append(select(x, density, next(rngs)).size)

    rows = [
        ("torch.topk(|x|, k) (exact)", timeit(lambda: torch.topk(xt.abs(), k, sorted=False), repeat), k),
        ("np.argpartition (exact)", timeit(lambda: topk_indices(x, k), repeat), k),
    ]
    t_s = timeit(sampled, repeat)
    rows.append(("dgc.select (sampled)", t_s, int(statistics.median(counts))))
    t_ref = rows[0][1]
    print(f"\n(a) selection on {x.size:,} float32 entries, density {density}, k = {k:,}"
          f" (torch threads {torch.get_num_threads()})")
    print(f"{'method':<30}{'time ms':>10}{'speedup':>10}{'selected':>11}{'/k':>7}")
    for name, t, n in rows:
        print(f"{name:<30}{t * 1e3:>10.2f}{t_ref / t:>9.1f}x{n:>11,}{n / k:>7.2f}")
    print(f"sampled counts over {len(counts)} runs: min {min(counts):,}, max {max(counts):,}"
          f" ({min(counts) / k:.2f}k-{max(counts) / k:.2f}k)")


def bench_throughput(x: np.ndarray, repeat: int) -> None:
    from fedsim.codecs.base import CodecContext, TensorInfo, payload_nbytes, validate_payload
    from fedsim.registry import CODECS

    shape = (x.size // 1000, 1000) if x.size % 1000 == 0 else (x.size, 1)
    x2 = x.reshape(shape)
    info = TensorInfo("bench", shape)
    nbytes = x.nbytes
    from fedsim.codecs import kernels

    path = f"numba kernels, {kernels.threads()} thread(s)" if kernels.available() else "numpy (numba not installed)"
    print(f"\n(b) encode + decode of one {shape} float32 tensor ({nbytes / 1e6:.0f} MB), defaults; "
          f"dqsg/ndqsg/qsgd: {path}")
    print(f"{'codec':<16}{'encode ms':>11}{'decode ms':>11}{'GB/s':>8}{'payload B':>13}{'ratio':>8}")
    out = np.empty_like(x)
    t = timeit(lambda: np.copyto(out, x), repeat)
    print(f"{'np.copyto':<16}{t * 1e3:>11.2f}{'':>11}{nbytes / t / 1e9:>8.2f}{nbytes:>13,}{1.0:>8.1f}")
    for name in CODECS.names():  # ndqsg's decode uses a side information y near x
        try:
            codec = CODECS.build(name)
        except Exception as err:  # noqa: BLE001 - report and go on
            print(f"{name:<16} skipped: cannot build with defaults ({err})")
            continue
        ctx = CodecContext(seed=0, round=100, client=0, tensor=0)  # past any warm-up
        state = codec.init(info)
        payload, _ = codec.encode(x2, state, ctx)
        validate_payload(codec, payload, info)
        t_enc = timeit(functools.partial(codec.encode, x2, state, ctx), repeat)
        if hasattr(codec, "decode_with_side_info"):  # nested codes decode around side information y
            y = (x2 + np.float32(0.01) * np.abs(x2).max()).astype(np.float32)
            t_dec = timeit(functools.partial(codec.decode_with_side_info, payload, info, ctx, y), repeat)
        else:
            t_dec = timeit(functools.partial(codec.decode, payload, info, ctx), repeat)
        size = payload_nbytes(payload)
        print(f"{name:<16}{t_enc * 1e3:>11.2f}{t_dec * 1e3:>11.2f}{nbytes / (t_enc + t_dec) / 1e9:>8.2f}"
              f"{size:>13,}{nbytes / size:>8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10_000_000, help="entries of the test tensor")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median)")
    ap.add_argument("--density", type=float, default=0.001, help="density of part (a)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for torch.topk")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    x = np.random.default_rng(0).standard_normal(args.size).astype(np.float32)
    bench_threshold(x, args.density, args.repeat)
    bench_throughput(x, args.repeat)


if __name__ == "__main__":
    main()
