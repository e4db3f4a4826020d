"""Synthetic LongBench workload from LongBench v1's published per-dataset statistics.

FoE's evaluation serves LongBench prompts (../shared/reference/papers.md); the prompts themselves
are not shipped here, so requests are built from the published numbers:

* Average input length per dataset, in *words* (Python ``str.split``) for English and code
  datasets: THUDM/LongBench, ``LongBench/task.md``, "LongBench statistics" table (the v1 release
  that includes MultiNews and SAMSum; repository commit 072a5a7). Paper: Bai et al., ACL 2024,
  arXiv 2308.14508. Chinese datasets (counted in characters, not words) are left out.
* Number of samples per dataset (same table): 200, except MultiFieldQA-en 150, LCC and
  RepoBench-P 500. Datasets are mixed in these proportions, so ``longbench_suite`` is one pass
  over the benchmark.
* Generation cap ``max_new_tokens`` per dataset: ``dataset2maxlen.json``, read by LongBench's
  ``pred.py``. The repository's top-level ``config/dataset2maxlen.json`` (commit f6227eb) gives
  every value below except multi_news (512) and samsum (128), which come from the v1 release's
  ``LongBench/config/dataset2maxlen.json`` as quoted verbatim by downstream evaluation code.
  Requests generate exactly the cap: it is the only published output length, so outputs are an
  upper bound (real models may stop early at EOS).

Words to tokens: ``TOKENS_PER_WORD = 4/3`` from OpenAI's rule of thumb "100 tokens ~= 75 words"
for English text (OpenAI tokenizer page / Help Center, "What are tokens and how to count them?").
Other BPE tokenizers differ by model, and code splits into more tokens per whitespace word, so
LCC/RepoBench-P prompts are likely underestimated; pass ``tokens_per_word`` to change the factor.

Spread: only averages are published. By default every request of a dataset has the dataset's
mean length (``length_cv=0``); ``length_cv > 0`` draws lognormal lengths with that coefficient of
variation and the same mean (a user assumption, not a LongBench number).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simfoe.errors import SpecError
from simfoe.workloads.requests import RequestTable

#: OpenAI's "100 tokens ~= 75 words" rule for English (see module docstring).
TOKENS_PER_WORD = 4.0 / 3.0


@dataclass(frozen=True)
class LongBenchDataset:
    """One LongBench v1 dataset: mean input words, sample count and generation cap (tokens)."""

    name: str  # key as in dataset2maxlen.json
    avg_words: int  # task.md "Avg len" (words, Python str.split)
    samples: int  # task.md "#Sample"
    max_new_tokens: int  # dataset2maxlen.json


#: English and code datasets of LongBench v1 (task.md + dataset2maxlen.json, see module docstring).
DATASETS: tuple[LongBenchDataset, ...] = (
    LongBenchDataset("narrativeqa", 18409, 200, 128),
    LongBenchDataset("qasper", 3619, 200, 128),
    LongBenchDataset("multifieldqa_en", 4559, 150, 64),
    LongBenchDataset("hotpotqa", 9151, 200, 32),
    LongBenchDataset("2wikimqa", 4887, 200, 32),
    LongBenchDataset("musique", 11214, 200, 32),
    LongBenchDataset("gov_report", 8734, 200, 512),
    LongBenchDataset("qmsum", 10614, 200, 512),
    LongBenchDataset("multi_news", 2113, 200, 512),
    LongBenchDataset("trec", 5177, 200, 64),
    LongBenchDataset("triviaqa", 8209, 200, 32),
    LongBenchDataset("samsum", 6258, 200, 128),
    LongBenchDataset("passage_count", 11141, 200, 32),
    LongBenchDataset("passage_retrieval_en", 9289, 200, 32),
    LongBenchDataset("lcc", 1235, 500, 64),
    LongBenchDataset("repobench-p", 4206, 500, 64),
)
BY_NAME = {d.name: d for d in DATASETS}


def select(datasets: Sequence[str] | str | None = None) -> tuple[LongBenchDataset, ...]:
    """Datasets by name (a list or a comma-separated string); None or "all" = every one."""
    if datasets is None or datasets == "all" or datasets == "":
        return DATASETS
    names = [s.strip() for s in datasets.split(",")] if isinstance(datasets, str) else list(datasets)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise SpecError("longbench dataset", ",".join(unknown) or "(none)", "one or more of " + ", ".join(BY_NAME))
    return tuple(BY_NAME[n] for n in dict.fromkeys(names))


def _prompt_tokens(
    ds: np.ndarray, table: tuple[LongBenchDataset, ...], rng: np.random.Generator,
    tokens_per_word: float, length_cv: float, max_prompt_tokens: int | None,
) -> np.ndarray:
    """Prompt tokens for dataset indices ``ds`` (mean = avg words x tokens per word)."""
    if not (math.isfinite(tokens_per_word) and tokens_per_word > 0):
        raise SpecError("tokens_per_word", tokens_per_word, "a number > 0 (default 4/3)")
    if not (math.isfinite(length_cv) and length_cv >= 0):
        raise SpecError("length_cv", length_cv, "a coefficient of variation >= 0 (0 = every prompt at the mean)")
    mean = np.array([d.avg_words for d in table], dtype=np.float64)[ds] * tokens_per_word
    if length_cv > 0:
        s2 = math.log1p(length_cv**2)  # lognormal with this CV and mean `mean`
        mean = mean * np.exp(rng.normal(-0.5 * s2, math.sqrt(s2), size=len(ds)))
    p = np.maximum(np.rint(mean), 1).astype(np.int64)
    if max_prompt_tokens is not None:
        if max_prompt_tokens < 1:
            raise SpecError("max_prompt_tokens", max_prompt_tokens, "an integer >= 1 or None")
        p = np.minimum(p, max_prompt_tokens)  # LongBench's pred.py truncates over-long prompts in the middle
    return p


def _table(ds: np.ndarray, table: tuple[LongBenchDataset, ...], rng, tokens_per_word, length_cv, max_prompt_tokens) -> RequestTable:
    p = _prompt_tokens(ds, table, rng, tokens_per_word, length_cv, max_prompt_tokens)
    o = np.array([d.max_new_tokens for d in table], dtype=np.int64)[ds]
    names = np.array([d.name for d in table])[ds]
    return RequestTable.from_arrays(None, p, o, prompt_type=names, source="longbench")


def longbench_requests(
    n: int,
    rng: np.random.Generator,
    datasets: Sequence[str] | str | None = None,
    tokens_per_word: float = TOKENS_PER_WORD,
    length_cv: float = 0.0,
    max_prompt_tokens: int | None = None,
) -> RequestTable:
    """``n`` untimed LongBench-like requests; dataset drawn in proportion to its sample count.

    ``prompt_type`` holds the dataset name; prompt and output lengths are in tokens."""
    if n < 0:
        raise SpecError("requests", n, "a count >= 0")
    table = select(datasets)
    w = np.array([d.samples for d in table], dtype=np.float64)
    ds = rng.choice(len(table), size=n, p=w / w.sum())
    return _table(ds, table, rng, tokens_per_word, length_cv, max_prompt_tokens)


def longbench_suite(
    rng: np.random.Generator,
    datasets: Sequence[str] | str | None = None,
    tokens_per_word: float = TOKENS_PER_WORD,
    length_cv: float = 0.0,
    max_prompt_tokens: int | None = None,
) -> RequestTable:
    """Every sample of the chosen datasets once (3,750 for all), in a random order."""
    table = select(datasets)
    ds = rng.permutation(np.repeat(np.arange(len(table)), [d.samples for d in table]))
    return _table(ds, table, rng, tokens_per_word, length_cv, max_prompt_tokens)
