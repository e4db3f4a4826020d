"""Candidate layouts for the planner: every MoE and FoE placement of one model on 1..max_nodes nodes.

A :class:`Candidate` is one model instance (``nodes`` nodes of one GPU type, laid out as MoE or FoE
with ``settings``: dotted ``placement.*`` overrides) served by ``replicas`` data-parallel copies
(``floor(max_nodes / nodes)``). Dimensions:

* MoE: attention ``tp`` (TP inside a node, DP across nodes; vLLM EP) or ``dp`` (DeepSeek/SGLang);
  EP group size (the largest valid one, and one node's GPUs when that differs); dispatch with
  DeepEP-style dedup or one copy per expert choice.
* FoE: clusters C (divisors of the KV-head count) and GPUs per cluster g with C x g = GPUs,
  a cluster never straddling nodes. A model that cannot be federated (``resolve_foe`` refuses it,
  e.g. MLA without ``placement.foe.clusters``) is reported as skipped with the refusal message.

Candidates that the placement rules reject are not returned; their reasons are.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from simfoe.errors import SpecError


@dataclass(frozen=True)
class Candidate:
    """One layout to evaluate. ``settings``: placement overrides as ``(path, value)`` pairs."""

    hardware: str
    nodes: int
    arch: str
    settings: tuple[tuple[str, object], ...]
    replicas: int
    gpus_per_node: int

    @property
    def gpus(self) -> int:
        """GPUs of one instance."""
        return self.nodes * self.gpus_per_node

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.replicas

    @property
    def overrides(self) -> tuple[str, ...]:
        return tuple(f"{k}={_fmt(v)}" for k, v in self.settings)

    @property
    def label(self) -> str:
        s = dict(self.settings)
        if self.arch == "moe":
            att = s.get("placement.moe.attention", "tp")
            att_s = f"TP{self.gpus_per_node} attn" if att == "tp" else "DP attn"
            ep = s.get("placement.moe.ep")
            dd = "dedup" if s.get("placement.moe.dedup_dispatch", True) else "per-choice"
            body = f"MoE {att_s}, EP{ep}, {dd} dispatch"
        else:
            C, g = s.get("placement.foe.clusters"), s.get("placement.foe.gpus_per_cluster")
            per_gpu = C // self.gpus if isinstance(C, int) and C > self.gpus else 0
            body = f"FoE C={C}, {per_gpu} per GPU" if per_gpu else f"FoE C={C} x {g} GPU"
        return f"{body} | {self.nodes} node(s) {self.hardware} x{self.replicas}"

    def key(self) -> tuple:
        return (self.hardware, self.nodes, self.arch, self.settings)


@dataclass
class Enumeration:
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"what", "reason"}


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


#: MoE attention layouts searched, and at most this many EP sizes and dispatch variants per node count
ATTENTIONS = ("tp", "dp")
MAX_EP_SIZES = 2
DISPATCH_VARIANTS = (True, False)


def _foe_clusters(model, user_overrides) -> list:
    """FoE cluster counts to try: the user's ``placement.foe.clusters``, else every divisor of the
    KV-head count ([None] for MLA, which resolve_foe refuses with its own message)."""
    user_c = next((o.split("=", 1)[1] for o in user_overrides
                   if o.split("=", 1)[0].strip() == "placement.foe.clusters"), None)
    if user_c is not None:
        try:
            return [int(user_c)]
        except ValueError:
            raise SpecError("--set", f"placement.foe.clusters={user_c}", "an integer number of clusters") from None
    if model.attention.kind == "mla":
        return [None]
    return _divisors(model.attention.n_kv_heads)


def layout_bound(model, n_hardware: int, max_nodes: int, user_overrides=(), archs=("moe", "foe"),
                 dispatch_variants: bool = True) -> int:
    """Upper bound on the candidates :func:`enumerate_layouts` returns (valid or not), counted
    without resolving any placement: hardware x node counts x variants per node count."""
    per_nodes = 0
    if "moe" in archs:
        dd = len(DISPATCH_VARIANTS) if (dispatch_variants and model.moe) else 1
        per_nodes += len(ATTENTIONS) * (MAX_EP_SIZES if model.moe else 1) * dd
    if "foe" in archs and model.moe is not None:
        per_nodes += len(_foe_clusters(model, user_overrides))
    return n_hardware * max_nodes * per_nodes


def enumerate_layouts(model, hardware: dict, max_nodes: int, user_overrides=(), archs=("moe", "foe"),
                      dispatch_variants: bool = True) -> Enumeration:
    """All candidates for ``model`` (a ModelSpec) on ``hardware`` ({name: HardwareSpec}).

    ``user_overrides``: the user's ``--set`` strings; a ``placement.*`` path set there pins that
    dimension (it is not searched). Placement validity is checked with the resolvers."""
    from simfoe.specs.io import build_placement

    user_pl = [o for o in user_overrides if o.strip().startswith("placement.")]
    en = _Enumerator(model, hardware, max_nodes, {o.split("=", 1)[0].strip() for o in user_pl}, user_pl)
    try:
        redundant = build_placement("moe", 1, user_pl).moe.redundant_experts
    except SpecError:
        redundant = 0  # the resolvers report the bad override for every candidate
    foe_reasons: dict[str, str] = {}
    for hw_name, hw in hardware.items():
        gpn = hw.node.gpus_per_node
        for nodes in range(1, max_nodes + 1):
            if "moe" in archs:
                en.moe(hw_name, gpn, nodes, redundant, dispatch_variants)
            if "foe" in archs:
                if model.moe is None:
                    foe_reasons["dense"] = "FoE needs an MoE model (a dense model has no experts to federate)"
                    continue
                en.foe(hw_name, gpn, nodes, _foe_clusters(model, user_overrides), foe_reasons)
    for what, reason in foe_reasons.items():
        en.out.skipped.append({"what": f"FoE ({what})", "reason": reason, "foe_not_federable": True})
    return en.out


@dataclass
class _Enumerator:
    """Collects the valid, distinct candidates of one enumeration and the placements skipped (with why).
    ``pinned``: placement paths the user's ``--set`` fixes; ``user_pl``: those ``--set`` strings."""

    model: object
    hardware: dict
    max_nodes: int
    pinned: set
    user_pl: list
    out: Enumeration = field(default_factory=Enumeration)
    seen: set = field(default_factory=set)

    def add(self, hw_name: str, gpn: int, nodes: int, arch: str, settings) -> SpecError | None:
        """Resolve one placement; keep it (once, under its resolved settings) or return why it is invalid."""
        from simfoe.specs.io import build_placement
        from simfoe.specs.placement import resolve_foe, resolve_moe

        settings = tuple((k, v) for k, v in settings if k not in self.pinned)
        ov = [f"{k}={_fmt(v)}" for k, v in settings] + self.user_pl
        try:
            pl = build_placement(arch, nodes, ov)
            dom = self.hardware[hw_name].node.gpus_per_domain  # an FoE cluster may span the nodes of one NVLink domain
            lay = resolve_foe(self.model, gpn, pl, dom) if arch == "foe" else resolve_moe(self.model, gpn, pl)
        except SpecError as e:
            return e
        # canonical settings: the resolved values (so pinned/derived values show in the label)
        if arch == "moe":
            canon = (("placement.moe.attention", lay.attention), ("placement.moe.ep", lay.ep),
                     ("placement.moe.dedup_dispatch", lay.dedup))
        else:
            canon = (("placement.foe.clusters", lay.clusters), ("placement.foe.gpus_per_cluster", lay.gpus_per_cluster))
        c = Candidate(hw_name, nodes, arch, canon, self.max_nodes // nodes, gpn)
        if c.key() not in self.seen:
            self.seen.add(c.key())
            self.out.candidates.append(c)
        return None

    def moe(self, hw_name: str, gpn: int, nodes: int, redundant: int, dispatch_variants: bool) -> None:
        """MoE candidates on ``nodes`` nodes: each attention layout x the largest EP size (and one node's)
        x the dispatch variants."""
        from simfoe.specs.placement import ep_sizes

        moe = self.model.moe
        if moe is None:
            eps = [None]
        else:
            valid = ep_sizes(nodes * gpn, moe.n_experts + redundant)  # slots: replicas included
            eps = sorted({max(valid), *([gpn] if gpn in valid else [])}, reverse=True)
        for att in ATTENTIONS:
            for ep in eps:
                for dd in (DISPATCH_VARIANTS if (dispatch_variants and moe) else (True,)):
                    s = [("placement.moe.attention", att), ("placement.moe.dedup_dispatch", dd)]
                    if ep is not None:
                        s.append(("placement.moe.ep", ep))
                    err = self.add(hw_name, gpn, nodes, "moe", s)
                    if err is not None:
                        self.out.skipped.append({"what": f"MoE {att} attn EP{ep} on {nodes} node(s) {hw_name}",
                                                 "reason": str(err)})

    def foe(self, hw_name: str, gpn: int, nodes: int, clusters: list, foe_reasons: dict) -> None:
        """FoE candidates on ``nodes`` nodes, one per cluster count; a model-wide refusal goes to
        ``foe_reasons`` (reported once), any other to the skipped placements."""
        G = nodes * gpn
        for C in clusters:
            s = [] if C is None else [("placement.foe.clusters", C)]
            if C is not None and C <= G:
                if G % C == 0:
                    s.append(("placement.foe.gpus_per_cluster", G // C))
            err = self.add(hw_name, gpn, nodes, "foe", s)
            if err is not None:
                msg = str(err)
                if C is None or "federate" in msg or "MLA" in msg or "iso-parameter" in msg:
                    foe_reasons[f"C={C}"] = msg
                else:
                    self.out.skipped.append({"what": f"FoE C={C} on {nodes} node(s) {hw_name}", "reason": msg})
