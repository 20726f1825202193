"""Encode + decode throughput of dqsg, ndqsg and qsgd beside a memory copy.

    python benchmarks/quantizers.py [--n 10000000] [--repeat 5] [--threads T] [--paths jit numpy]

GB/s = 4 bytes * n / (best encode + best decode time) of float32 input; the server side
of ndqsg is ``decode_with_side_info`` and of every codec includes payload validation
(``validate_payload``: the strict unpack) when ``--validate`` is given. Each codec runs
on the compiled kernels (numba, ``--threads`` threads; default: fedsim's, i.e. the CPU
count) and on the numpy path (what a numpy-only edge install runs); both produce the
same bytes. Goal (issue 5): >= 2.5 GB/s for dqsg and ndqsg.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from fedsim.codecs import CodecContext, TensorInfo, kernels, payload_nbytes, validate_payload
from fedsim.codecs.dithered import Dqsg
from fedsim.codecs.nested import Ndqsg
from fedsim.codecs.qsgd import Qsgd


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="codec threads (default: fedsim's)")
    ap.add_argument("--paths", nargs="+", choices=("jit", "numpy"), default=["jit", "numpy"])
    ap.add_argument("--validate", action="store_true", help="time validate_payload on the server too")
    args = ap.parse_args()
    n = args.n
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y = x + np.float32(0.01)
    info = TensorInfo("x", (n,))
    ctx = CodecContext(seed=1, round=0, client=0, tensor=0)
    gb = 4 * n / 1e9
    kernels.set_threads(args.threads)

    buf = np.empty_like(x)
    t_copy = best(lambda: np.copyto(buf, x), args.repeat)
    print(f"n = {n:,} float32 ({gb * 1e3:.0f} MB), best of {args.repeat}, {os.cpu_count()} CPUs")
    print(f"{'codec':20s} {'path':14s} {'bits/coord':>10s} {'enc ms':>8s} {'dec ms':>8s} {'enc+dec GB/s':>13s}")
    print(f"{'np.copyto':20s} {'':14s} {32.0:10.3f} {t_copy * 1e3:8.1f} {'':>8s} {gb / t_copy:13.2f}")
    codecs = [
        ("dqsg M=3", Dqsg(levels=3, bucket=512), None),
        ("ndqsg M1=3 M2=1", Ndqsg(m1=3, m2=1, bucket=512), y),
        ("qsgd s=1", Qsgd(levels=1, bucket=512), None),
        ("qsgd s=3", Qsgd(levels=3, bucket=512), None),
    ]
    for path in args.paths:
        kernels.use_jit(path == "jit")
        if path == "jit" and not kernels.available():
            print("numba is not installed: no compiled path (pip install numba, or the 'fast' extra)")
            continue
        label_path = f"numba x{kernels.threads()}" if path == "jit" else "numpy"
        for label, codec, side in codecs:
            payload, _ = codec.encode(x, codec.init(info), ctx)  # compiles the kernels on the first call

            def dec(codec=codec, payload=payload, side=side) -> object:
                if args.validate:
                    validate_payload(codec, payload, info)
                if side is not None:
                    return codec.decode_with_side_info(payload, info, ctx, side)
                return codec.decode(payload, info, ctx)

            def enc(codec=codec) -> object:
                return codec.encode(x, {}, ctx)

            dec()
            t_enc = best(enc, args.repeat)
            t_dec = best(dec, args.repeat)
            bits = 8 * payload_nbytes(payload) / n
            print(f"{label:20s} {label_path:14s} {bits:10.3f} {t_enc * 1e3:8.1f} {t_dec * 1e3:8.1f}"
                  f" {gb / (t_enc + t_dec):13.2f}")
    kernels.use_jit(True)


if __name__ == "__main__":
    main()
