"""The network and device model: who is available, who drops, when updates arrive.

Pure and seeded, numpy only (no torch, no Flower): the server loop asks
:class:`NetworkModel` before sampling (:meth:`~NetworkModel.available`), after sampling
(:meth:`~NetworkModel.plan`) and after the replies (:meth:`~NetworkModel.settle`).
Built-in device profiles are registered in :data:`fedsim.registry.PROFILES` when this
package is imported. See ``docs/network-model.md``.
"""

from .config import (
    Always,
    DailyWindow,
    DeviceProfile,
    Fixed,
    LogNormal,
    NetworkConfig,
    ProfileSpec,
    TraceWindows,
    Uniform,
)
from .model import ClientOutcome, ClientWork, Device, NetworkModel, RoundOutcome, RoundPlan
from .profiles import BUILTIN_PROFILES, get_profile, resolve_profiles
from .selection import num_to_sample, select_arrivals
from .timing import ClientTiming, client_time, training_flops_per_sample
from .traces import TraceError, TraceRecord, dump_traces, load_traces

__all__ = [
    "Always", "BUILTIN_PROFILES", "ClientOutcome", "ClientTiming", "ClientWork", "DailyWindow",
    "Device", "DeviceProfile", "Fixed", "LogNormal", "NetworkConfig", "NetworkModel",
    "ProfileSpec", "RoundOutcome", "RoundPlan", "TraceError", "TraceRecord", "TraceWindows",
    "Uniform", "client_time", "dump_traces", "get_profile", "load_traces", "num_to_sample",
    "resolve_profiles", "select_arrivals", "training_flops_per_sample",
]
