"""Hybrid reward routing by prompt domain (ByteDance RLHF, papers.md §2(a)).

Each (record, response) gets its reward from the first source in `order` that
applies to the record:

  verifier            the record's domain maps to a registered verifier (VERIFIERS) and
                      the record holds the field that verifier checks against
                      (VERIFIER_FIELDS: math -> ground_truth, code -> unit_tests)   {0, 1}
  genrm_ground_truth  the record has a ground_truth: GenRM(x, y, ground truth)     [0, 1]
  genrm_reference     the record has a best-of-N reference: GenRM(x, y, reference) [0, 1]

The default order is the paper's ranking of resistance to reward hacking
(RTV, then GenRM with ground truth, then GenRM with a best-of-N reference).
A record no source applies to is an error naming it. How the paper mixes
sources in one batch is not published (papers.md §2(g).4); here every source
is mapped as `scale * r + shift` (config, default identity), which keeps RTV
and GenRM on the same [0, 1] scale.

Verifier calls are cached by (verifier, response, reference) and run on a
thread pool (the code sandbox spends its time in a child process).
"""

import concurrent.futures
import dataclasses
import functools
from typing import Mapping, Sequence

import numpy as np

from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards.verifiers import VERIFIERS

# Verifier name -> the PromptRecord field holding its reference.
VERIFIER_FIELDS: Registry[str] = Registry("verifier reference field")
VERIFIER_FIELDS.register("math")("ground_truth")
VERIFIER_FIELDS.register("code")("unit_tests")

DEFAULT_ORDER = ("verifier", "genrm_ground_truth", "genrm_reference")


@dataclasses.dataclass
class RewardBatch:
    rewards: np.ndarray  # f32[N] after the per-source scale/shift
    routes: list[str]  # the source that scored each sample
    valid: np.ndarray  # bool[N]: False where a GenRM output was unparsable (reward = its failure value)
    details: list | None = None  # optional per-sample text for sample logs (Align-Pro: the frozen answer)


@dataclasses.dataclass
class RewardContext:
    """What the sources may use; absent resources make their sources never apply."""

    verifiers: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"math": "math", "code": "code"})
    genrm: object | None = None  # rewards.genrm.GenRM
    num_workers: int = 2  # verifier threads
    cache_size: int = 65536


class VerifierSource:
    def __init__(self, ctx: RewardContext):
        for domain, name in ctx.verifiers.items():
            VERIFIERS.get(name)  # unknown names fail at construction, not mid-run
            VERIFIER_FIELDS.get(name)
        self.ctx = ctx
        self._call = functools.lru_cache(maxsize=ctx.cache_size)(lambda name, y, ref: VERIFIERS.get(name)(y, ref))

    def applies(self, rec: PromptRecord) -> bool:
        name = self.ctx.verifiers.get(rec.domain)
        return name is not None and getattr(rec, VERIFIER_FIELDS.get(name)) is not None

    def score(self, recs, responses):
        jobs = [(self.ctx.verifiers[r.domain], y, getattr(r, VERIFIER_FIELDS.get(self.ctx.verifiers[r.domain])))
                for r, y in zip(recs, responses)]
        if self.ctx.num_workers > 1 and len(jobs) > 1:
            with concurrent.futures.ThreadPoolExecutor(self.ctx.num_workers) as pool:
                out = list(pool.map(lambda j: self._call(*j), jobs))
        else:
            out = [self._call(*j) for j in jobs]
        return np.asarray(out, np.float32), np.ones(len(out), bool)


class _GenRMSource:
    field = ""

    def __init__(self, ctx: RewardContext):
        self.genrm = ctx.genrm

    def applies(self, rec: PromptRecord) -> bool:
        return self.genrm is not None and getattr(rec, self.field) is not None

    def score(self, recs, responses):
        out = self.genrm.score([r.prompt for r in recs], list(responses), [getattr(r, self.field) for r in recs])
        return out.scores, out.valid


class GenRMGroundTruthSource(_GenRMSource):
    field = "ground_truth"


class GenRMReferenceSource(_GenRMSource):
    field = "reference"


REWARD_SOURCES: Registry = Registry("reward source")
REWARD_SOURCES.register("verifier")(VerifierSource)
REWARD_SOURCES.register("genrm_ground_truth")(GenRMGroundTruthSource)
REWARD_SOURCES.register("genrm_reference")(GenRMReferenceSource)


class RewardRouter:
    """router(records, responses) -> RewardBatch; see the module docstring."""

    def __init__(self, ctx: RewardContext, order: Sequence[str] = DEFAULT_ORDER,
                 transforms: Mapping[str, tuple[float, float]] | None = None):
        if not order:
            raise ValueError("the reward router needs at least one source")
        self.order = tuple(order)
        self.sources = {name: REWARD_SOURCES.get(name)(ctx) for name in self.order}
        self.transforms = dict(transforms or {})
        unknown = set(self.transforms) - set(self.order)
        if unknown:
            raise ValueError(f"reward transforms for sources not in the order {self.order}: {sorted(unknown)}")

    def route(self, rec: PromptRecord) -> str:
        for name in self.order:
            if self.sources[name].applies(rec):
                return name
        raise ValueError(f"no reward source applies to record {rec.id!r} ({rec.where}, domain {rec.domain!r}): "
                         f"sources tried {self.order}; give it a ground_truth / unit_tests / reference, a verifier "
                         "for its domain, or configure a GenRM / Bradley-Terry scorer")

    def check(self, records: Sequence[PromptRecord]) -> dict[str, int]:
        """Routes every record up front (fails before any sampling); returns the count per route."""
        counts: dict[str, int] = {}
        for r in records:
            name = self.route(r)
            counts[name] = counts.get(name, 0) + 1
        return counts

    def __call__(self, records: Sequence[PromptRecord], responses: Sequence[str]) -> RewardBatch:
        if len(records) != len(responses):
            raise ValueError(f"{len(records)} records but {len(responses)} responses")
        routes = [self.route(r) for r in records]
        rewards = np.zeros(len(records), np.float32)
        valid = np.ones(len(records), bool)
        for name in self.order:
            idx = [i for i, rt in enumerate(routes) if rt == name]
            if not idx:
                continue
            s, v = self.sources[name].score([records[i] for i in idx], [responses[i] for i in idx])
            scale, shift = self.transforms.get(name, (1.0, 0.0))
            rewards[idx] = scale * np.asarray(s, np.float32) + shift
            valid[idx] = v
        return RewardBatch(rewards=rewards, routes=routes, valid=valid)


def reward_metrics(batch: RewardBatch, records: Sequence[PromptRecord], prefix: str = "reward") -> dict[str, float]:
    """Mean reward overall, per domain and per route, and the invalid (unparsable) fraction."""
    out = {f"{prefix}/mean": float(batch.rewards.mean()) if len(batch.rewards) else 0.0,
           f"{prefix}/invalid_fraction": float(1.0 - batch.valid.mean()) if len(batch.valid) else 0.0}
    for key, values in (("domain", [r.domain for r in records]), ("route", batch.routes)):
        for v in sorted(set(values)):
            sel = np.array([x == v for x in values])
            out[f"{prefix}/{key}/{v}"] = float(batch.rewards[sel].mean())
    return out
