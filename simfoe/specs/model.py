"""Model spec: a decoder-only transformer, dense or Mixture-of-Experts, with MHA/GQA/MLA attention.

Dimensions are counts; sizes derived here are in elements (parameters) or bytes.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from simfoe.specs.base import Spec
from simfoe.specs.precision import Precision, PrecisionSpec

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}


class AttentionSpec(Spec):
    kind: Literal["mha", "gqa", "mla"] = "gqa"
    n_heads: PositiveInt
    n_kv_heads: PositiveInt | None = Field(None, description="GQA/MHA KV heads; None for MLA")
    head_dim: PositiveInt
    # MLA (DeepSeek-V2/V3) dimensions
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    sliding_window: int | None = Field(None, description="tokens; applied to every `sliding_every`-th layer")
    sliding_every: int = Field(2, ge=1, description="1 = all layers sliding, 2 = alternate layers")

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "mla":
            if not (self.kv_lora_rank and self.qk_rope_head_dim and self.qk_nope_head_dim and self.v_head_dim):
                raise ValueError("mla needs kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, v_head_dim")
        else:
            if self.n_kv_heads is None:
                raise ValueError(f"{self.kind} needs n_kv_heads")
            if self.n_heads % self.n_kv_heads:
                raise ValueError("n_heads must be a multiple of n_kv_heads")
        return self


class MoESpec(Spec):
    n_experts: PositiveInt
    top_k: PositiveInt
    expert_ffn: PositiveInt = Field(description="intermediate width of one expert")
    n_shared_experts: int = Field(0, ge=0)
    shared_ffn: int = Field(0, ge=0, description="intermediate width of one shared expert (0 = expert_ffn)")
    first_dense_layers: int = Field(0, ge=0, description="leading layers with a dense FFN instead of MoE")
    n_group: PositiveInt = Field(1, description="expert groups for group-limited routing: group g holds experts "
                                 "g*E/n_group .. (g+1)*E/n_group - 1 (config.json `n_group`; DeepSeek-V3/R1: 8); "
                                 "1: ungrouped")
    topk_group: PositiveInt = Field(1, description="groups a token's experts may come from (config.json "
                                    "`topk_group`; DeepSeek-V3/R1: 4); values >= n_group mean no limit")

    @property
    def shared_width(self) -> int:
        """Summed intermediate width of the shared experts (n_shared x their width); 0 without them."""
        return self.n_shared_experts * (self.shared_ffn or self.expert_ffn)

    @property
    def groups_per_token(self) -> int:
        """Groups a token's experts may come from: topk_group capped at n_group (n_group when ungrouped)."""
        return min(self.topk_group, self.n_group)

    @model_validator(mode="after")
    def _check(self):
        if self.top_k > self.n_experts:
            raise ValueError("top_k must be <= n_experts")
        if self.n_experts % self.n_group:
            raise ValueError(f"n_group ({self.n_group}) must divide n_experts ({self.n_experts})")
        if self.groups_per_token * (self.n_experts // self.n_group) < self.top_k:
            raise ValueError(f"topk_group ({self.topk_group}) groups of {self.n_experts // self.n_group} experts "
                             f"must hold top_k ({self.top_k}) experts")
        return self


class ModelSpec(Spec):
    name: str
    n_layers: PositiveInt
    hidden: PositiveInt
    vocab: PositiveInt
    dtype: Literal["bf16", "fp16", "fp8", "fp32"] = Field(
        "bf16", description="shorthand for the precision of every component (fp8: fp8 block-scaled GEMMs and fp8 "
        "dispatch, bf16 attention, KV cache, combine and residual stream); model.precision overrides per component")
    precision: PrecisionSpec = Field(default_factory=PrecisionSpec,
                                     description="format per component (simfoe.specs.precision)")
    ffn: int = Field(0, ge=0, description="dense FFN width (dense models and MoE first_dense_layers)")
    gated: bool = Field(True, description="SwiGLU-style FFN: three matrices instead of two")
    attention: AttentionSpec
    moe: MoESpec | None = None
    mtp_layers: int = Field(0, ge=0, description="multi-token-prediction modules (config.json "
                            "num_nextn_predict_layers; DeepSeek-V3: 1): one transformer layer each, like the model's "
                            "last, sharing its embedding and LM head; serving drafts with them under EngineConfig.mtp")
    source: str = ""
    hf_id: str | None = None  # Hugging Face repository id of the checkpoint, as its source names it (launch commands)

    @model_validator(mode="after")
    def _check(self):
        if self.moe is None and self.ffn == 0:
            raise ValueError("a dense model needs ffn > 0")
        if self.moe and self.moe.first_dense_layers and self.ffn == 0:
            raise ValueError("first_dense_layers > 0 needs ffn > 0")
        if self.moe and self.moe.first_dense_layers >= self.n_layers:
            raise ValueError("first_dense_layers must be < n_layers")
        return self

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def dtype_bytes(self) -> int:
        """Bytes of one element of the ``dtype`` shorthand (the costs read :attr:`formats` instead)."""
        return DTYPE_BYTES[self.dtype]

    @property
    def formats(self) -> Precision:
        """Format of every component: ``precision`` fields given, the rest from the ``dtype`` shorthand."""
        return self.precision.resolve(self.dtype)

    @property
    def act_bytes(self) -> float:
        """Bytes of one residual-stream element (norms, residual adds, all-reduces): bf16 under fp8."""
        return self.formats.bytes_of("residual")

    @property
    def n_moe_layers(self) -> int:
        return 0 if self.moe is None else self.n_layers - self.moe.first_dense_layers

    @property
    def n_dense_layers(self) -> int:
        return self.n_layers - self.n_moe_layers

    @property
    def ffn_mats(self) -> int:
        return 3 if self.gated else 2

    def attn_params(self) -> int:
        """Parameters of one attention block (projections only)."""
        a, h = self.attention, self.hidden
        if a.kind == "mla":
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            q = (h * a.q_lora_rank + a.q_lora_rank * a.n_heads * qk) if a.q_lora_rank else h * a.n_heads * qk
            kv = h * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank * a.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
            o = a.n_heads * a.v_head_dim * h
            return q + kv + o
        return h * a.head_dim * (a.n_heads + 2 * a.n_kv_heads) + a.n_heads * a.head_dim * h

    def expert_params(self) -> int:
        return self.ffn_mats * self.hidden * self.moe.expert_ffn if self.moe else 0

    def shared_params(self) -> int:
        return self.ffn_mats * self.hidden * self.moe.shared_width if self.moe else 0

    def dense_ffn_params(self) -> int:
        return self.ffn_mats * self.hidden * self.ffn

    def _params(self, experts_per_token: int | None) -> int:
        """Parameters of the whole model, counting ``experts_per_token`` routed experts per MoE layer
        (None: all of them); embeddings and LM head untied."""
        moe_layer = 0
        if self.moe:
            e = self.moe.n_experts if experts_per_token is None else experts_per_token
            moe_layer = e * self.expert_params() + self.shared_params() + self.hidden * self.moe.n_experts
        return (
            self.n_layers * self.attn_params()
            + self.n_dense_layers * self.dense_ffn_params()
            + self.n_moe_layers * moe_layer
            + 2 * self.vocab * self.hidden
        )

    def total_params(self) -> int:
        """All parameters (embeddings and LM head untied)."""
        return self._params(None)

    def active_params(self) -> int:
        """Parameters touched per token (top-k routed experts)."""
        return self._params(self.moe.top_k if self.moe else None)

    def kv_bytes_per_token(self) -> float:
        """KV-cache bytes per token summed over layers (MLA: compressed latent + rope key), in the
        ``kv_cache`` format."""
        a, b = self.attention, self.formats.bytes_of("kv_cache")
        if a.kind == "mla":
            per_layer = (a.kv_lora_rank + a.qk_rope_head_dim) * b
        else:
            per_layer = 2 * a.n_kv_heads * a.head_dim * b
        return per_layer * self.n_layers
