"""Hardware spec: GPU, node (NVLink/NVSwitch domain) and network (NICs, leaf/spine switches).

Units: FLOP/s, bytes, bytes/s (per direction), seconds. Every number in a profile YAML names its
source in the profile's ``provenance`` map (dotted path -> source); see hwprofiles/README.md.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from simfoe.specs.base import Spec


class GPUSpec(Spec):
    """One accelerator (or, for CPU profiles, one worker process)."""

    name: str
    peak_flops: dict[str, PositiveFloat] = Field(description="dense peak FLOP/s by dtype (bf16, fp8, fp32)")
    hbm_bytes: PositiveFloat = Field(description="device memory capacity, bytes")
    hbm_bandwidth: PositiveFloat = Field(description="peak memory bandwidth, bytes/s")
    l2_bytes: float = Field(0.0, ge=0)
    launch_overhead_s: float = Field(0.0, ge=0, description="fixed cost per kernel, s")
    sms: PositiveInt | None = Field(None, description="streaming multiprocessors (None: not given)")


class NodeSpec(Spec):
    """A node (tray): GPUs joined by NVLink/NVSwitch (or shared memory for CPU profiles). The NVLink domain
    is one node unless ``gpus_per_nvlink_domain`` joins several (GB200 NVL72: 18 trays of 4 GPUs, 72)."""

    gpus_per_node: PositiveInt
    nvlink_bandwidth: PositiveFloat = Field(description="per-GPU NVLink bandwidth per direction, bytes/s")
    nvlink_latency_s: float = Field(ge=0, description="one-way GPU-to-GPU small-message latency, s")
    nvswitch_reduction: bool = Field(False, description="in-switch reduction (NVLS) available")
    gpus_per_nvlink_domain: PositiveInt | None = Field(
        None, description="GPUs in one NVLink/NVSwitch domain, a multiple of gpus_per_node; traffic inside it "
        "never uses a NIC (None: one node)")

    @model_validator(mode="after")
    def _domain(self) -> "NodeSpec":
        d = self.gpus_per_nvlink_domain
        if d is not None and d % self.gpus_per_node:
            raise ValueError(f"gpus_per_nvlink_domain ({d}) must be a multiple of gpus_per_node ({self.gpus_per_node})")
        return self

    @property
    def gpus_per_domain(self) -> int:
        """GPUs per NVLink domain: ``gpus_per_nvlink_domain``, else one node's."""
        return self.gpus_per_nvlink_domain or self.gpus_per_node


class NetworkSpec(Spec):
    """Scale-out network: one NIC per GPU by default, rail-optimized leaves, a spine."""

    nics_per_node: PositiveInt
    nic_bandwidth: PositiveFloat = Field(description="line rate per NIC per direction, bytes/s")
    nic_latency_s: float = Field(ge=0, description="one-way NIC-to-NIC small-message latency, s")
    topology: Literal["rail-optimized", "fat-tree"] = "rail-optimized"
    oversubscription: float = Field(1.0, ge=1.0, description="leaf uplink oversubscription factor")


class NcclProtocolChoice(Spec):
    """Ring collectives inside one NVLink domain run the protocol NCCL's own tuner picks, not the fastest one.

    The pick uses NCCL's published ring constants (simfoe.costs.collectives.NCCL_RING_TUNER: base and per-step
    latencies, bandwidth shares) with the two per-architecture bandwidths below; nothing fitted enters it. The
    chosen protocol is priced with the path's own terms; LL128 and Simple also take at least ``floor_alpha_s`` +
    steps x ``floor_step_s`` (the byte stream hides it once it is longer)."""

    tuner_bus_bandwidth: float = Field(gt=0, description="ring bus bandwidth NCCL's tuner assumes for one GPU "
                                       "(its topology's NVLink bandwidth), bytes/s")
    tuner_ll_max_bandwidth: float = Field(gt=0, description="NCCL's cap on the LL protocol's bus bandwidth "
                                          "(llMaxBw), bytes/s")
    floor_alpha_s: float = Field(ge=0, description="LL128 / Simple ring: base of the time floor, s")
    floor_step_s: float = Field(ge=0, description="LL128 / Simple ring: time floor per ring step, s")


class PathCalibration(Spec):
    """Latency-bandwidth calibration of one transfer path, for NCCL's two regimes.

    Simple protocol (large messages): a collective costs ``alpha_s + steps * hop_s`` of latency plus
    its bytes at ``efficiency`` x line rate, shared max-min fairly with other flows. LL protocol (small
    messages, when ``ll_alpha_s`` is set): ``ll_alpha_s + steps * ll_hop_s``, at
    ``ll_bandwidth_fraction`` of that rate; LL128 (mid-size messages, when ``ll128_alpha_s`` is set)
    likewise with its own terms. Each collective uses the protocol that is faster for its size, or, with
    ``nccl_protocol_choice``, the ring's inside one NVLink domain uses the one NCCL's tuner picks.
    """

    alpha_s: float = Field(ge=0, description="Simple protocol: base latency of one collective on this path, s")
    efficiency: float = Field(gt=0, le=1.0, description="achieved bandwidth / line rate")
    hop_s: float = Field(0.0, ge=0, description="Simple protocol: latency per algorithm step, s")
    ll_alpha_s: float | None = Field(None, ge=0, description="LL protocol: base latency, s (None: no LL)")
    ll_hop_s: float = Field(0.0, ge=0, description="LL protocol: latency per algorithm step, s")
    ll_bandwidth_fraction: float = Field(0.5, gt=0, le=1.0, description="LL protocol: share of the Simple rate")
    ll128_alpha_s: float | None = Field(None, ge=0, description="LL128 protocol: base latency, s (None: no LL128)")
    ll128_hop_s: float = Field(0.0, ge=0, description="LL128 protocol: latency per algorithm step, s")
    ll128_bandwidth_fraction: float = Field(0.92, gt=0, le=1.0, description="LL128 protocol: share of the Simple rate")
    ring_copy_step: float | None = Field(None, ge=0, description="ring all-reduce / all-gather / reduce-scatter inside one "
                                  "NVLink domain: time of a channel's receive-only last step of each chunk loop (a copy "
                                  "into the user buffer, no link bytes), in link steps; s link steps then take "
                                  "(s + ring_copy_step) / s of the link time (None: no such term)")
    nccl_protocol_choice: NcclProtocolChoice | None = Field(
        None, description="ring collectives inside one NVLink domain take the protocol NCCL's tuner picks, with a "
        "per-step time floor for LL128 / Simple (None: the fastest protocol for the size)")

    @model_validator(mode="after")
    def _choice_needs_protocols(self) -> "PathCalibration":
        if self.nccl_protocol_choice is not None and (self.ll_alpha_s is None or self.ll128_alpha_s is None):
            raise ValueError("nccl_protocol_choice needs ll_alpha_s and ll128_alpha_s (NCCL picks among all three)")
        return self


class DispatchKernel(Spec):
    """Fitted terms of one MoE dispatch or combine kernel (simfoe.costs.dispatch prices it)."""

    alpha_s: float = Field(ge=0, description="latency of the kernel inside one node, s")
    alpha_internode_s: float = Field(ge=0, description="latency of the kernel across nodes, s")
    nvlink_efficiency: float = Field(gt=0, le=1.0, description="achieved NVLink rate / line rate")
    rdma_efficiency: float = Field(gt=0, le=1.0, description="achieved RDMA rate per NIC / line rate")
    nvlink_sm_rate: float = Field(0.0, ge=0, description="NVLink forwarding bytes/s one SM sustains "
                                  "(deepep-normal across nodes; 0: no SM bound)")
    message_s: float = Field(0.0, ge=0, description="cost per message (token copy) a GPU sends, s")
    notify_s: float = Field(0.0, ge=0, description="deepep-normal across nodes: the notify step before the "
                            "kernel (exchange of per-rank counts) takes notify_s + notify_per_node_s x nodes + "
                            "notify_per_token_s x tokens per GPU, s")
    notify_per_node_s: float = Field(0.0, ge=0, description="see notify_s, s per node")
    notify_per_token_s: float = Field(0.0, ge=0, description="notify time per token a GPU holds, s")


class DeepEPCalibration(Spec):
    """DeepEP's normal (high-throughput) and low-latency kernels, fitted to measured tables."""

    sms: PositiveInt = Field(20, description="SMs the normal kernels run on (DeepEP Buffer.num_sms default)")
    normal_dispatch: DispatchKernel
    normal_combine: DispatchKernel
    ll_dispatch: DispatchKernel
    ll_combine: DispatchKernel


class CollectiveCalibration(Spec):
    """Fitted per-path parameters used by the collective algorithms."""

    nvlink: PathCalibration
    network: PathCalibration
    nvls: PathCalibration | None = None
    all_to_all_nvlink_efficiency: float | None = Field(
        None, gt=0, le=1.0, description="achieved NVLink rate of an all-to-all's flows / line rate "
        "(None: nvlink.efficiency, the ring's)")
    all_to_all_alpha_s: float | None = Field(
        None, ge=0, description="one-node all-to-all as NCCL's point-to-point kernel: latency of its Simple "
        "protocol, s; LL (nvlink.ll_*) when no peer gets more than 16 KiB (None: the nvlink path's protocols)")
    all_to_all_channel_pool: bool = Field(
        False, description="one-node all-to-all: NCCL's p2p channels are split evenly over the n peers, the GPU "
        "itself included, so a group of n sends at (n-1)/n of the all-to-all NVLink rate")
    deepep: DeepEPCalibration | None = Field(None, description="DeepEP dispatch/combine kernels "
                                             "(None: they use the nvlink/network calibration)")


def _increasing(spec, axes: tuple[str, ...]) -> None:
    """Raise ValueError unless each named list field of ``spec`` is strictly increasing."""
    for axis in axes:
        v = getattr(spec, axis)
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"{axis} must be strictly increasing")


class GemmTable(Spec):
    """Measured GEMM efficiency (achieved FLOP/s / ``gpu.peak_flops[dtype]``) of single calls, for
    libraries whose efficiency is not a smooth function of the shape (MKL switches kernels with m).

    Two slices through the measured grid, each over the rows ``m``: ``eff_n[i][j]`` at n = ``n[i]``,
    k = ``k0``, m = ``m[j]``; ``eff_k[i][j]`` at n = ``n0``, k = ``k[i]``. simfoe.costs.kernels
    interpolates them linearly in log m, log n and log k (clamped at the ends) and combines the
    n and k slices multiplicatively around (n0, k0).
    """

    m: list[PositiveInt] = Field(min_length=1, description="rows measured, increasing")
    n0: PositiveInt
    k0: PositiveInt
    n: list[PositiveInt] = Field(min_length=1, description="columns measured at k = k0, increasing, holds n0")
    k: list[PositiveInt] = Field(min_length=1, description="inner dims measured at n = n0, increasing, holds k0")
    eff_n: list[list[PositiveFloat]]
    eff_k: list[list[PositiveFloat]]

    @model_validator(mode="after")
    def _shapes(self) -> "GemmTable":
        _increasing(self, ("m", "n", "k"))
        if self.n0 not in self.n or self.k0 not in self.k:
            raise ValueError("n must hold n0 and k must hold k0")
        for name, axis in (("eff_n", self.n), ("eff_k", self.k)):
            grid = getattr(self, name)
            if len(grid) != len(axis) or any(len(r) != len(self.m) for r in grid):
                raise ValueError(f"{name} must be len({name[-1]}) rows of len(m) efficiencies")
        return self


class GemmCorrection(Spec):
    """A fitted correction of the smooth GEMM form (GPU profiles fitted from kernel tables,
    simfoe.calibration.fit_tables): ln(measured / predicted) on a grid of log2 m, log2 n, log2 k
    points, interpolated trilinearly (clamped at the ends); a GEMM's latency is multiplied by
    exp(interpolated value). ``log_ratio`` is flat, m slowest, k fastest."""

    log2_m: list[float] = Field(min_length=2, description="grid points in log2 m, increasing")
    log2_n: list[float] = Field(min_length=2, description="grid points in log2 n, increasing")
    log2_k: list[float] = Field(min_length=2, description="grid points in log2 k, increasing")
    log_ratio: list[float]

    @model_validator(mode="after")
    def _shape(self) -> "GemmCorrection":
        _increasing(self, ("log2_m", "log2_n", "log2_k"))
        if len(self.log_ratio) != len(self.log2_m) * len(self.log2_n) * len(self.log2_k):
            raise ValueError("log_ratio must hold len(log2_m) x len(log2_n) x len(log2_k) values")
        return self


class HardwareSpec(Spec):
    """A hardware profile: GPU + node + network + fitted kernel and collective efficiencies."""

    name: str
    description: str = ""
    gpu: GPUSpec
    node: NodeSpec
    network: NetworkSpec
    kernels: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="fitted kernel-efficiency parameters by kernel family"
    )
    gemm_tables: dict[str, GemmTable] = Field(
        default_factory=dict, description="measured GEMM efficiency tables by dtype (CPU profiles); "
        "a dtype listed here is priced from its table instead of kernels.gemm"
    )
    gemm_corrections: dict[str, GemmCorrection] = Field(
        default_factory=dict, description="fitted corrections of the smooth GEMM form by math dtype (GPU "
        "profiles fitted from kernel tables); a dtype listed here has its GEMM latency scaled by it"
    )
    collectives: CollectiveCalibration
    provenance: dict[str, str] = Field(default_factory=dict)

    @property
    def nvlink_rate(self) -> float:
        """Effective NVLink rate per GPU per direction (bytes/s): line rate x the ring's fitted efficiency
        (``collectives.nvlink.efficiency``). The one place this product is formed: the fabric's link capacities,
        the collectives' rates and the pipelines' hand-overs all read it."""
        return self.node.nvlink_bandwidth * self.collectives.nvlink.efficiency

    @property
    def nic_rate(self) -> float:
        """Effective NIC rate per direction (bytes/s): line rate x ``collectives.network.efficiency``."""
        return self.network.nic_bandwidth * self.collectives.network.efficiency

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype`` (falls back to bf16 for fp16)."""
        from simfoe.errors import SpecError

        key = {"fp16": "bf16"}.get(dtype, dtype) if dtype not in self.gpu.peak_flops else dtype
        if key not in self.gpu.peak_flops:
            raise SpecError("dtype", dtype, "allowed: " + ", ".join(sorted(self.gpu.peak_flops)))
        return self.gpu.peak_flops[key]
