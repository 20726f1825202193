"""Deep Gradient Compression, on a federated client.

Lin, Han, Mao, Wang, Dally, "Deep Gradient Compression: Reducing the Communication
Bandwidth for Distributed Training", ICLR 2018, https://arxiv.org/abs/1712.01887;
reference code https://github.com/synxlin/deep-gradient-compression (``dgc/compression.py``,
``dgc/memory.py``). See also ../shared/ALGORITHMS.md, section 1.

Per tensor with ``ndim > 1`` and per round (ALGORITHMS.md sec. 1; paper Sec. 3)::

    g   = clip_by_norm(g, clip_norm * N**-0.5)   # local gradient clipping (Sec. 3.3), optional
    u   = m * u + g                              # momentum correction (Sec. 3.2, Eq. 7)
    v   = v + u                                  # local accumulation (Sec. 3.1)
    idx = {j : |v_j| >= thr}, about k = ceil(numel * density) of them
    send (idx, v[idx]);  v[idx] = 0              # the rest stays in v: nothing is lost
    u[idx] = 0                                   # momentum factor masking (Sec. 3.3)

Without momentum correction (ablation) the raw gradient is accumulated, ``v = v + g``
(Eq. 5 without the server's momentum), and ``u`` is not used. The density rises over the
first W rounds (warm-up, Sec. 3.4; :func:`warmup_density`). Tensors with ``ndim <= 1``
(biases, norm parameters) are sent dense, as momentum SGD: ``u = m * u + g``, send ``u``
(what the reference code's dense path computes); so is every tensor when ``density = 1``,
which makes DGC at density 1 exactly dense momentum SGD.

Federated adaptation
--------------------
*The gradient.* In fedsim a client's "gradient" ``g`` is its round update, the
pseudo-gradient ``g = w_local - w_global``: the local model after its local epochs minus
the global model it received, with the sign of what the server ADDS to the model (FedAvg:
``w <- w + (1/N) sum_k decode(payload_k)``). DGC runs once per round on it, not on every
local step: the local optimizer is untouched and the codec sees one tensor per round.

*Where momentum lives.* ``u`` and ``v`` are client state (:meth:`DGC.init`), persisted by
the integration's client-state store between the rounds a client takes part in; a client
not sampled in a round keeps both unchanged. Momentum correction therefore acts *across
rounds*: at density 1 the server applies ``(1/N) sum_k u_k`` with
``u_k <- m u_k + g_k``, which (with every client in every round) is server momentum on the
mean pseudo-gradient, FedAvgM (Hsu, Qi, Brown, arXiv 1909.06335, 2019) with server
learning rate 1 and momentum m. With partial participation each client's momentum only
advances in its own rounds.

*Momentum 0.9 and the step size.* A pseudo-gradient is already a full step (local
learning rate times local steps), so heavy-ball momentum m on it multiplies the
steady-state step by 1/(1-m) = 10 at m = 0.9: FedAvgM's effective learning rate
eta/(1-m) (Hsu et al. 2019) is 10 with eta = 1. The (1-m) scaling that would bring it back
to 1 (``u = m u + (1-m) g``) interacts badly with momentum factor masking, which is on
by default: a coordinate sent every round has its momentum reset every round, so it would
be sent at (1-m) = 0.1 of its pseudo-gradient, i.e. the largest, most consistent
coordinates would learn 10x slower than under FedAvg. Without scaling, a coordinate sent
every round gets exactly its pseudo-gradient (u = g, v = g, both reset), and one held back
for tau rounds gets each of its pseudo-gradients weighted by (1 - m**tau)/(1 - m) < 10:
momentum only amplifies what waited, which is what momentum correction is for.
We therefore keep the paper's update without scaling, and lower the default momentum to
**m = 0.5** (SlowMo, Wang et al., ICLR 2020, uses slow momentum 0.5-0.8 with slow learning
rate 1 on pseudo-gradients), which bounds the amplification of dense tensors (biases) and
of held-back coordinates by 1/(1-m) = 2. ``momentum=0.9`` reproduces the reference code.
Checked on a small FedAvg run (MLP 64-256-10 on the sklearn digits, 10 clients with two
label-sorted shards each, 2 local epochs of SGD at lr 0.05, density 0.01, warm-up 5; test
accuracy at rounds 10/20/30/40): dense FedAvg .81/.89/.92/.94; m = 0.9 .84/.70/.64/.79
(oscillates); m = 0.9 with the (1-m) scaling .23/.55/.66/.79 (slow); m = 0.5
.88/.81/.89/.88, reaching .94 at round 60 (dense .947); m = 0 .81/.81/.89/.91 (.937 at 60).
At local lr 0.02, m = 0.9 stayed below .73 after 40 rounds.

*Step size against density.* Error feedback holds a coordinate back for about 1/density
rounds and then sends everything it earned at once, so it is stable only when the
per-round step is small compared to the density (Stich et al., NeurIPS 2018, Thm. 2.4:
step ~ delta = k/d). A pseudo-gradient is a large step: on the isotropic quadratic
f_k(w) = |w - c_k|^2/2 with 3 clients, density 0.02 and 5 local steps at lr 0.1
(pseudo-gradient 0.41 (c_k - w)), DGC does not converge for any m (m = 0 plateaus above
the starting distance, m = 0.5 and 0.9 grow); at lr 0.02 it gets within 0.05-0.1 of the
start (m = 0 / 0.5), m = 0.9 still diverges. With different clients it also keeps a noise
floor (the EF21 motivation, Richtarik et al. 2021). Neural networks, whose updates are
concentrated on few coordinates, tolerate far more (the digits run above), but at density
0.001 the integration should keep the local step small (few local steps, small lr) or
apply a server learning rate below 1.

Selection (Sec. 3.1 and the reference code's ``_sparsify``): the threshold is the k-th
largest magnitude of a strided sample with a random start (:func:`sampled_threshold`);
if more than 1.3k entries pass, the exact top-k of the passing entries is taken; if fewer
than 0.8k pass, the threshold is multiplied by 0.8 and the count redone, at most 10 times
(:func:`select`). Where the reference then truncates the passing set to its first k
*positions*, we keep its k *largest* entries (an argpartition over at most 1.3k values):
same count, no bias toward low indices. So at most k entries are ever sent, exactly k when
the sample covers the tensor.
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.registry import CODECS

from .base import CodecContext, Payload, State, TensorInfo
from .sparse import SparseCodec, check_density, num_selected, topk_indices

CLIP_EPS = 1e-6  # as in the reference code's clip_grad_norm_


# --------------------------------------------------------------------------- pure steps


def warmup_density(e: int, density: float, warmup_rounds: int) -> float:
    """Density of warm-up round ``e`` (0-based), the reference code's schedule.

    ``density_e = max(c**(e + 1), rho)`` for ``e < W`` and ``rho`` afterwards, with
    ``c = rho**(1 / (W + 1))`` (``DGCCompressor.warmup_compress_ratio``). For rho = 0.001
    and W = 5: 0.316, 0.1, 0.0316, 0.01, 0.00316, then 0.001. (The paper's Sec. 3.4 lists
    sparsities 75%, 93.75%, 98.4375%, 99.6%, 99.9%, i.e. density /4 each epoch; we follow
    the code.)

    Parameters
    ----------
    e : int
        Warm-up round index, 0 for the first round (``ctx.round - first_round`` in
        :class:`DGC`).
    density : float
        Final density rho in (0, 1].
    warmup_rounds : int
        W; 0 disables warm-up.
    """
    if e < 0:
        raise ValueError(f"warm-up round index must be >= 0; got {e}")
    if warmup_rounds <= 0 or e >= warmup_rounds:
        return density
    c = density ** (1.0 / (warmup_rounds + 1))  # c = rho^(1/(W+1))
    return max(c ** (e + 1), density)  # density_e = max(c^(e+1), rho)


def sample_stride(numel: int, density: float, sample_ratio: float) -> tuple[int, int]:
    """(stride, number of samples) of the strided sample, as the reference code sizes it.

    The sample needs ``target = max(ceil(numel * sample_ratio), ceil(2 / density))``
    entries, so that its top ``ceil(n_s * density)`` holds at least 2 values. If
    ``numel <= target`` the whole tensor is the sample (stride 1: the threshold is exact).
    Otherwise ``stride = ceil(numel / target / 32) * 32 + 1`` (odd, so a stride does not
    alias with power-of-two row lengths), lowered by 8 until ``numel // stride >= target``.
    """
    target = max(math.ceil(numel * sample_ratio), math.ceil(round(2.0 / density, 9)))
    if numel <= target:
        return 1, numel
    stride = math.ceil(numel / target / 32) * 32 + 1
    while numel // stride < target:
        stride -= 8
    return stride, numel // stride


def sampled_threshold(
    a: np.ndarray, density: float, sample_ratio: float, rng: np.random.Generator
) -> float:
    """Threshold on magnitudes ``a`` (1-D, >= 0) estimated from a strided sample.

    thr = the ceil(n_s * density)-th largest of ``a[start::stride]`` (n_s samples, random
    ``start`` in [0, stride)): about ``numel * density`` entries of ``a`` reach it.
    """
    stride, n_s = sample_stride(a.size, density, sample_ratio)
    if stride == 1:
        sample = a
    else:
        start = int(rng.integers(0, stride))
        sample = a[start::stride][:n_s]
    k_s = num_selected(sample.size, density)
    return float(np.partition(sample, sample.size - k_s)[sample.size - k_s])  # k_s-th largest


def select(
    v: np.ndarray,
    density: float,
    rng: np.random.Generator,
    *,
    sample_ratio: float = 0.01,
    upper: float = 1.3,
    lower: float = 0.8,
    max_iters: int = 10,
) -> np.ndarray:
    """Sorted positions of about k = ceil(numel * density) largest ``|v|`` (1-D), at most k.

    Threshold by sampling, then the reference code's adaptation: more than ``upper * k``
    pass -> exact top-k of the passing; fewer than ``lower * k`` -> ``thr *= lower`` and
    recount (at most ``max_iters`` times). A passing set larger than k is cut to its k
    largest. Exactly k when the sample is the whole tensor.
    """
    numel = v.size
    k = num_selected(numel, density)
    if k >= numel:
        return np.arange(numel, dtype=np.int64)
    a = np.abs(v)
    thr = sampled_threshold(a, density, sample_ratio, rng)
    mask = a >= thr
    count = int(np.count_nonzero(mask))
    if sample_stride(numel, density, sample_ratio)[0] > 1:
        for _ in range(max_iters):
            if count > upper * k:
                break  # exact top-k of the passing set, below
            if count >= lower * k:
                break
            thr *= lower  # too few: lower the threshold, thr <- 0.8 thr
            mask = a >= thr
            count = int(np.count_nonzero(mask))
    idx = np.flatnonzero(mask)
    if idx.size > k:
        idx = idx[topk_indices(v[idx], k)]  # the k largest of the passing set, still sorted
    return idx.astype(np.int64, copy=False)


def clip_by_norm(g: np.ndarray, max_norm: float) -> np.ndarray:
    """``g * min(1, max_norm / (||g||_2 + 1e-6))`` (the reference's ``clip_grad_norm_``)."""
    norm = float(np.linalg.norm(g.reshape(-1).astype(np.float64)))
    coef = max_norm / (norm + CLIP_EPS)
    return g * np.float32(coef) if coef < 1.0 else g


def momentum_correction(
    u: np.ndarray, v: np.ndarray, g: np.ndarray, momentum: float, correction: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One accumulation step; returns new (u, v), inputs untouched.

    With correction (Eq. 7): ``u = m u + g``, ``v = v + u``. Without: ``v = v + g``,
    u unchanged (plain local gradient accumulation).
    """
    if not correction:
        return u, v + g  # v <- v + g
    u = np.float32(momentum) * u + g  # u <- m u + g
    return u, v + u  # v <- v + u


def mask_sent(
    u: np.ndarray, v: np.ndarray, idx: np.ndarray, sent: np.ndarray, masking: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """After sending ``sent`` (decoded values) at flat ``idx``: ``v[idx] -= sent``, and
    ``u[idx] = 0`` when ``masking`` (momentum factor masking). Returns new (u, v).

    With float32 values ``v[idx] - sent = 0``; with float16 the rounding error stays in v.
    """
    v = v.copy()
    v.reshape(-1)[idx] -= sent  # v[idx] <- v[idx] - sent (= 0 in float32)
    if masking:
        u = u.copy()
        u.reshape(-1)[idx] = 0.0  # u[idx] <- 0
    return u, v


# --------------------------------------------------------------------------- codec


@CODECS.register("dgc")
class DGC(SparseCodec):
    """Deep Gradient Compression (Lin et al., ICLR 2018) as a per-tensor codec.

    Parameters
    ----------
    density : float
        Final fraction of entries sent per tensor, rho in (0, 1]. Reference: 0.001.
    momentum : float
        m in [0, 1). 0.5 by default, not the reference's 0.9: see "Momentum 0.9 and the
        step size" in the module docstring.
    momentum_correction : bool
        Accumulate momentum locally (u, Eq. 7); False accumulates the raw update.
    momentum_masking : bool
        Zero u where sent (momentum factor masking).
    clip_norm : float or None
        Local gradient clipping: clip each tensor's update to L2 norm
        ``clip_norm * num_clients**-0.5``; None disables it (the reference's default).
    num_clients : int or None
        N of the clipping rule, the number of clients whose updates are averaged in a
        round; required when ``clip_norm`` is set.
    warmup_rounds : int
        W: density rises exponentially over the first W rounds (:func:`warmup_density`);
        0 disables warm-up. Reference: 5 (epochs).
    first_round : int
        The ``ctx.round`` of the first round (Flower's server rounds start at 1): warm-up
        round index e = ctx.round - first_round.
    sample_ratio : float
        Fraction of entries in the threshold sample, in (0, 1]. Reference: 0.01.
    upper, lower, max_iters : float, float, int
        The adaptation rules of :func:`select` (reference: 1.3, 0.8, 10).
    values, index_coding : str
        Wire format (:class:`~fedsim.codecs.sparse.SparseFormat`).
    dense_small : bool
        Send tensors with ndim <= 1 dense (momentum SGD).

    State (per tensor, read by name)
    --------------------------------
    ``u``: the momentum (float32, tensor shape); ``v``: the residual accumulation, what
    was earned but not yet sent (float32, tensor shape).
    """

    name = "dgc"

    def __init__(
        self,
        density: float = 0.001,
        *,
        momentum: float = 0.5,
        momentum_correction: bool = True,
        momentum_masking: bool = True,
        clip_norm: float | None = None,
        num_clients: int | None = None,
        warmup_rounds: int = 5,
        first_round: int = 1,
        sample_ratio: float = 0.01,
        upper: float = 1.3,
        lower: float = 0.8,
        max_iters: int = 10,
        values: str = "float32",
        index_coding: str = "uint32",
        dense_small: bool = True,
    ) -> None:
        self.density = check_density(density, "dgc")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"dgc: momentum must be in [0, 1) for the momentum sum to converge; got {momentum}")
        if clip_norm is not None:
            if not clip_norm > 0:
                raise ValueError(f"dgc: clip_norm must be > 0 (or None to disable clipping); got {clip_norm}")
            if num_clients is None or num_clients < 1:
                raise ValueError(
                    "dgc: clipping to clip_norm * N**-0.5 needs num_clients = N >= 1, the clients "
                    f"averaged per round; got num_clients={num_clients}"
                )
        if warmup_rounds < 0:
            raise ValueError(f"dgc: warmup_rounds must be >= 0 (0 disables warm-up); got {warmup_rounds}")
        if not 0.0 < sample_ratio <= 1.0:
            raise ValueError(f"dgc: sample_ratio must be in (0, 1]; got {sample_ratio}")
        if not upper >= 1.0:
            raise ValueError(f"dgc: upper must be >= 1 (it bounds the count above k); got {upper}")
        if not 0.0 < lower < 1.0:
            raise ValueError(f"dgc: lower must be in (0, 1) (threshold multiplier and count bound); got {lower}")
        if max_iters < 0:
            raise ValueError(f"dgc: max_iters must be >= 0; got {max_iters}")
        self.momentum = float(momentum)
        self.momentum_correction = bool(momentum_correction)
        self.momentum_masking = bool(momentum_masking)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.num_clients = num_clients
        self.warmup_rounds = int(warmup_rounds)
        self.first_round = int(first_round)
        self.sample_ratio = float(sample_ratio)
        self.upper = float(upper)
        self.lower = float(lower)
        self.max_iters = int(max_iters)
        super().__init__(values, index_coding, dense_small)

    # -- helpers
    def is_dense(self, info: TensorInfo) -> bool:
        """Whether the tensor goes dense: small (ndim <= 1) or density 1."""
        return self.density >= 1.0 or (self.dense_small and len(info.shape) <= 1)

    def round_density(self, round_: int) -> float:
        """The density used in round ``round_`` (``ctx.round``)."""
        e = round_ - self.first_round
        if e < 0:
            raise ValueError(
                f"dgc: round {round_} precedes first_round={self.first_round}; set first_round "
                "to the integration's first ctx.round"
            )
        return warmup_density(e, self.density, self.warmup_rounds)

    # -- codec
    def init(self, info: TensorInfo) -> State:
        return {
            "u": np.zeros(info.shape, dtype=np.float32),
            "v": np.zeros(info.shape, dtype=np.float32),
        }

    def encode(self, x: np.ndarray, state: State, ctx: CodecContext) -> tuple[Payload, State]:
        g = np.asarray(x, dtype=np.float32)
        u, v = state["u"], state["v"]
        if self.clip_norm is not None:
            assert self.num_clients is not None
            g = clip_by_norm(g, self.clip_norm / math.sqrt(self.num_clients))  # clip_norm * N^-1/2
        if self.is_dense(TensorInfo("", tuple(g.shape))):
            if self.momentum_correction:
                u = np.float32(self.momentum) * u + g  # dense momentum SGD: u <- m u + g
                return self.format.pack_dense(u), {"u": u, "v": v}
            return self.format.pack_dense(g), {"u": u, "v": v}
        density = self.round_density(ctx.round)
        u, v = momentum_correction(u, v, g, self.momentum, self.momentum_correction)
        flat = v.reshape(-1)
        idx = select(
            flat, density, ctx.rng("dgc-sample"), sample_ratio=self.sample_ratio,
            upper=self.upper, lower=self.lower, max_iters=self.max_iters,
        )
        payload = self.format.pack(idx, flat[idx])
        sent = payload["val"].astype(np.float32)
        u, v = mask_sent(u, v, idx, sent, self.momentum_masking and self.momentum_correction)
        return payload, {"u": u, "v": v}

