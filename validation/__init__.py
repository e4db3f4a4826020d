"""Validation microbenchmarks for simfoe.

The harness (``python -m validation.harness``) measures kernels (GEMM, grouped expert FFN, SDPA
attention, memory copy, eager MoE routing glue on CPU) and collectives (torch.distributed: gloo on CPU, NCCL on GPUs) and writes a
measurement set: ``kernels.csv``, ``collectives.csv`` and ``env.json``. It depends only on the Python
standard library and torch, so it runs on a bare machine that has PyTorch and no network; it never
imports simfoe. See validation/README.md for the file format and the FLOP/byte definitions.
"""
from __future__ import annotations

FORMAT_VERSION = 3
"""Version of the measurement-set format written by the harness (bumped on incompatible changes)."""
