"""Deep Gradient Compression on a federated client, as a composition of its techniques.

Lin, Han, Mao, Wang, Dally, "Deep Gradient Compression: Reducing the Communication
Bandwidth for Distributed Training", ICLR 2018, https://arxiv.org/abs/1712.01887;
reference code https://github.com/synxlin/deep-gradient-compression (``dgc/compression.py``,
``dgc/memory.py``). Per tensor with ``ndim > 1`` and per round (paper Sec. 3)::

    g   = clip_by_norm(g, clip_norm * N**-0.5)   # local gradient clipping (Sec. 3.3), optional
    u   = m * u + g                              # momentum correction (Sec. 3.2, Eq. 7)
    v   = v + u                                  # local accumulation (Sec. 3.1, Eq. 7)
    idx = {j : |v_j| >= thr}, about k = ceil(numel * density_t) of them   # Sec. 3.1
    send (idx, v[idx]);  v[idx] -= sent          # the rest stays in v: nothing is lost
    u[idx] = 0                                   # momentum factor masking (Sec. 3.3)

with ``density_t`` rising over the first W rounds (warm-up, Sec. 3.4). Without momentum
correction (ablation) the raw gradient is accumulated, ``v = v + g`` (Eq. 5 without the
server's momentum), and ``u`` is not used. Tensors with ``ndim <= 1`` (biases, norm
parameters) are sent dense, as momentum SGD: ``u = m * u + g``, send ``u`` (the reference
code's dense path); so is every tensor when ``density = 1``, which makes DGC at density 1
exactly dense momentum SGD.

The composition follows GRACE (Xu et al., "GRACE: A Compressed Communication Framework
for Distributed Machine Learning", ICDCS 2021), whose DGC is a compressor and a memory:

- :class:`GradientClip` (:func:`clip_by_norm`): local gradient clipping;
- :class:`MomentumMemory`: the state ``DGCState(u, v)``, with momentum correction
  (:func:`momentum_correction`, or :func:`accumulate` without it), the error memory
  (:func:`release`) and momentum factor masking (:func:`mask_momentum`);
- :class:`WarmupSchedule` (:func:`warmup_density`): the density of each round;
- a sparsifier, :class:`~fedsim.codecs.threshold.SampledThreshold` (the paper's sampled
  threshold with the reference code's top-k fallback);
- :class:`DGC`, the codec that runs them in the order above on the sparse wire format.

The registered ``dgc`` (:func:`dgc`) builds the composition from the parameters a run's
config gives. The federated reading of the paper (the "gradient" is the client's round
update ``w_local - w_global``, compressed once per round; ``u`` and ``v`` persist across
the rounds a client takes part in) and the experiments behind the default momentum 0.5
(not the reference's 0.9) are in ``docs/dgc-history.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np

from fedsim.registry import CODECS

from .base import CodecContext, Payload, TensorInfo
from .sparse import SparseCodec, check_density
from .threshold import SampledThreshold, sample_stride, sampled_threshold, select  # noqa: F401  (re-exported)

CLIP_EPS = 1e-6  # as in the reference code's clip_grad_norm_
SAMPLE_STREAM = "dgc-sample"  # ctx.rng stream of the threshold sample's random start


class DGCState(NamedTuple):
    """DGC's per-tensor client state (stored as ``{"u", "v"}``).

    ``u``: the momentum (float32, tensor shape); ``v``: the accumulation, what was earned
    but not yet sent (float32, tensor shape). Eq. 7's ``u`` and ``v``.
    """

    u: np.ndarray
    v: np.ndarray


# --------------------------------------------------------------------------- techniques


def clip_by_norm(g: np.ndarray, max_norm: float) -> np.ndarray:
    """``g * min(1, max_norm / (||g||_2 + 1e-6))`` (Sec. 3.3; the reference's ``clip_grad_norm_``)."""
    norm = float(np.linalg.norm(g.reshape(-1).astype(np.float64)))
    coef = max_norm / (norm + CLIP_EPS)
    return g * np.float32(coef) if coef < 1.0 else g


def momentum_correction(state: DGCState, g: np.ndarray, momentum: float) -> DGCState:
    """Eq. 7: ``u = m u + g``, then ``v = v + u``; a new state, the input untouched."""
    u = np.float32(momentum) * state.u + g  # u <- m u + g
    return DGCState(u, state.v + u)  # v <- v + u


def accumulate(state: DGCState, g: np.ndarray) -> DGCState:
    """Eq. 5 without momentum (the ablation of momentum correction): ``v = v + g``, ``u`` kept."""
    return DGCState(state.u, state.v + g)  # v <- v + g


def release(state: DGCState, idx: np.ndarray, sent: np.ndarray) -> DGCState:
    """The error memory: ``v[idx] -= sent`` (flat ``idx``, ``sent`` the values as decoded).

    With float32 values ``v[idx] - sent = 0`` (Sec. 3.1: the sent entries are cleared);
    with float16 the rounding error stays in ``v``, to be sent later.
    """
    v = state.v.copy()
    v.reshape(-1)[idx] -= sent  # v[idx] <- v[idx] - sent
    return DGCState(state.u, v)


def mask_momentum(state: DGCState, idx: np.ndarray) -> DGCState:
    """Momentum factor masking (Sec. 3.3): ``u[idx] = 0`` where entries were sent, so the
    stale momentum of a sent coordinate does not push it again."""
    u = state.u.copy()
    u.reshape(-1)[idx] = 0.0  # u[idx] <- 0
    return DGCState(u, state.v)


def warmup_density(e: int, density: float, warmup_rounds: int) -> float:
    """Density of warm-up round ``e`` (0-based), the reference code's schedule (Sec. 3.4).

    ``density_e = max(c**(e + 1), rho)`` for ``e < W`` and ``rho`` afterwards, with
    ``c = rho**(1 / (W + 1))`` (``DGCCompressor.warmup_compress_ratio``). For rho = 0.001
    and W = 5: 0.316, 0.1, 0.0316, 0.01, 0.00316, then 0.001. (The paper's Sec. 3.4 lists
    sparsities 75%, 93.75%, 98.4375%, 99.6%, 99.9%, i.e. density /4 each epoch; we follow
    the code.)

    Parameters
    ----------
    e : int
        Warm-up round index, 0 for the first round (``ctx.round - first_round``).
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


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class GradientClip:
    """Local gradient clipping (Sec. 3.3): each tensor's update to L2 norm ``clip_norm * N**-0.5``.

    ``num_clients`` is N, the number of clients whose updates are averaged in a round (the
    paper clips before summing over N nodes, so each gets a 1/sqrt(N) share of the norm).
    """

    clip_norm: float
    num_clients: int

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ValueError(f"dgc: clip_norm must be > 0 (or None to disable clipping); got {self.clip_norm}")
        if self.num_clients is None or self.num_clients < 1:
            raise ValueError(
                "dgc: clipping to clip_norm * N**-0.5 needs num_clients = N >= 1, the clients "
                f"averaged per round; got num_clients={self.num_clients}"
            )

    def __call__(self, g: np.ndarray) -> np.ndarray:
        return clip_by_norm(g, self.clip_norm / math.sqrt(self.num_clients))  # clip_norm * N^-1/2


@dataclass(frozen=True)
class WarmupSchedule:
    """The density of each round (Sec. 3.4): :func:`warmup_density` from ``first_round`` on.

    Parameters
    ----------
    density : float
        Final density rho in (0, 1].
    warmup_rounds : int
        W: density rises exponentially over the first W rounds; 0 disables warm-up.
    first_round : int
        The ``ctx.round`` of the first round (Flower's server rounds start at 1).
    """

    density: float
    warmup_rounds: int = 5
    first_round: int = 1

    def __post_init__(self) -> None:
        check_density(self.density, "dgc")
        if self.warmup_rounds < 0:
            raise ValueError(f"dgc: warmup_rounds must be >= 0 (0 disables warm-up); got {self.warmup_rounds}")

    def __call__(self, round_: int) -> float:
        """The density of round ``round_`` (``ctx.round``)."""
        e = round_ - self.first_round
        if e < 0:
            raise ValueError(
                f"dgc: round {round_} precedes first_round={self.first_round}; set first_round "
                "to the integration's first ctx.round"
            )
        return warmup_density(e, self.density, self.warmup_rounds)


@dataclass(frozen=True)
class MomentumMemory:
    """DGC's memory (GRACE's ``DgcMemory``): what a client keeps, ``DGCState(u, v)``.

    Parameters
    ----------
    momentum : float
        m in [0, 1).
    correction : bool
        Momentum correction (Eq. 7); False accumulates the raw update (Eq. 5).
    masking : bool
        Momentum factor masking (Sec. 3.3); only acts with correction (``u`` is unused without).
    """

    momentum: float = 0.5
    correction: bool = True
    masking: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"dgc: momentum must be in [0, 1) for the momentum sum to converge; got {self.momentum}")

    def init(self, shape: tuple[int, ...]) -> DGCState:
        return DGCState(np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32))

    def compensate(self, state: DGCState, g: np.ndarray) -> DGCState:
        """Add this round's update to what is kept: Eq. 7, or Eq. 5 without correction."""
        return momentum_correction(state, g, self.momentum) if self.correction else accumulate(state, g)

    def update(self, state: DGCState, idx: np.ndarray, sent: np.ndarray) -> DGCState:
        """After sending ``sent`` at flat ``idx``: release it from ``v``, mask ``u`` there."""
        state = release(state, idx, sent)
        return mask_momentum(state, idx) if self.masking and self.correction else state

    def dense(self, state: DGCState, g: np.ndarray) -> tuple[np.ndarray, DGCState]:
        """A tensor sent whole: momentum SGD, send ``u = m u + g`` (``g`` without correction)."""
        if not self.correction:
            return g, state
        u = np.float32(self.momentum) * state.u + g  # dense momentum SGD: u <- m u + g
        return u, DGCState(u, state.v)


class Sparsifier(Protocol):
    """What DGC sends of a tensor: sorted flat positions of at most ceil(size * density) entries."""

    def indices(self, v: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray: ...


# --------------------------------------------------------------------------- codec


class DGC(SparseCodec[DGCState]):
    """Deep Gradient Compression (Lin et al., ICLR 2018): clipping, memory, schedule, sparsifier.

    Parameters
    ----------
    sparsifier : Sparsifier
        Chooses the entries sent (:class:`~fedsim.codecs.threshold.SampledThreshold`).
    memory : MomentumMemory
        Momentum correction, error memory and momentum factor masking.
    schedule : WarmupSchedule
        The density of each round.
    clip : GradientClip or None
        Local gradient clipping, or none (the reference's default).
    values, index_coding : str
        Wire format (:class:`~fedsim.codecs.sparse.SparseFormat`).
    dense_small : bool
        Send tensors with ndim <= 1 dense (momentum SGD).
    """

    name = "dgc"

    def __init__(self, sparsifier: Sparsifier, memory: MomentumMemory, schedule: WarmupSchedule,
                 clip: GradientClip | None = None, *, values: str = "float32", index_coding: str = "uint32",
                 dense_small: bool = True) -> None:
        self.sparsifier, self.memory, self.schedule, self.clip = sparsifier, memory, schedule, clip
        super().__init__(values, index_coding, dense_small)

    def is_dense(self, info: TensorInfo) -> bool:
        """Whether the tensor goes dense: small (ndim <= 1) or density 1."""
        return self.schedule.density >= 1.0 or (self.dense_small and len(info.shape) <= 1)

    def init(self, info: TensorInfo) -> DGCState:
        return self.memory.init(info.shape)

    def encode(self, x: np.ndarray, state: DGCState, ctx: CodecContext) -> tuple[Payload, DGCState]:
        g = np.asarray(x, dtype=np.float32)
        if self.clip is not None:
            g = self.clip(g)
        if self.is_dense(TensorInfo("", tuple(g.shape))):
            send, state = self.memory.dense(state, g)
            return self.format.pack_dense(send), state
        density = self.schedule(ctx.round)
        state = self.memory.compensate(state, g)
        flat = state.v.reshape(-1)
        idx = self.sparsifier.indices(flat, density, ctx.rng(SAMPLE_STREAM))
        payload = self.format.pack(idx, flat[idx])
        return payload, self.memory.update(state, idx, payload["val"].astype(np.float32))


@CODECS.register("dgc")
def dgc(
    density: float = 0.001,
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
) -> DGC:
    """The ``dgc`` codec of a run's config (``codec: {name: dgc, params: {...}}``).

    Parameters
    ----------
    density : float
        Final fraction of entries sent per tensor, rho in (0, 1]. Reference: 0.001.
    momentum : float
        m in [0, 1). 0.5 by default, not the reference's 0.9 (docs/dgc-history.md).
    momentum_correction, momentum_masking : bool
        :class:`MomentumMemory`'s ``correction`` and ``masking``.
    clip_norm, num_clients : float or None, int or None
        :class:`GradientClip` (None: no clipping); ``num_clients`` required with ``clip_norm``.
    warmup_rounds, first_round : int
        :class:`WarmupSchedule`. Reference: 5 (epochs).
    sample_ratio, upper, lower, max_iters
        :class:`~fedsim.codecs.threshold.SampledThreshold`.
    values, index_coding, dense_small
        The wire format, as for ``topk``.
    """
    schedule = WarmupSchedule(check_density(density, "dgc"), int(warmup_rounds), int(first_round))
    memory = MomentumMemory(float(momentum), bool(momentum_correction), bool(momentum_masking))
    clip = None
    if clip_norm is not None:
        clip = GradientClip(float(clip_norm), num_clients)  # type: ignore[arg-type]  # None: GradientClip says why
    sparsifier = SampledThreshold(float(sample_ratio), float(upper), float(lower), int(max_iters))
    return DGC(sparsifier, memory, schedule, clip, values=values, index_coding=index_coding,
               dense_small=bool(dense_small))
