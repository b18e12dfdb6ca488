"""Critique-RM inference (MM-RLHF §3.2): greedy critique generation, then scalar scoring.

    critique c = RM.generate(critic_prompt(x, y))        (greedy: sampling several hurts, §5.3)
    reward     = RewardHead(h at the last token of [critic_prompt(x, y) ; c])

Generated critiques are decoded and re-encoded through the training
tokenization, so a scored sequence has exactly the training layout (chat
template suffix included) and the reward is read where training read it.

    rm = RewardModelInference(module, encoder_cfg, tokenizer, mesh, max_new_tokens=64, batch_size=16)
    rewards = rm.score_records(params, records, media_root=root)          # f32[N, 2], given critiques
    rewards, generated = rm.critique_then_score(params, records, media_root=root)
    bound = rm.bind(params)                                               # a streamed pass (score.py)
    rewards, critiques = rm.score_batch(bound, batch_records, media_root=root, generate=True)

Everything goes through `score_batch`, one global batch of G = batch_size
pairs (pad a short one with repeats): each process encodes only its host slot
of the G pairs (placement.host_slot), the critiques are generated through the
one Generator (`sample_rows`: one call for the G chosen answers, one for the
G rejected ones), and every process gets every pair's rewards and critiques.

Shapes: critic prompts are left-padded to the smallest of a few fixed
buckets (generate.fixed_buckets(max_length): max_length / 8, / 4, / 2, / 1)
that holds the batch's longest prompt, and the scoring sequences [G, 2, T]
are cut from T = max_length to the same kind of bucket (their padding is at
the end, and attention is causal, so the cut leaves every real token's value
unchanged). A long pass therefore compiles each function at most four times,
and short prompts are not padded to max_length.
"""

import dataclasses
import functools

import jax
import numpy as np

from mm_rlhf_jax.algorithms.reward_model import step as step_lib
from mm_rlhf_jax.data.example import ExampleEncoder
from mm_rlhf_jax.data.prompts import encode_critic_prompt
from mm_rlhf_jax.data.tokenizer import special_ids
from mm_rlhf_jax.progress import Progress
from mm_rlhf_jax.rollout.generate import Generator, fixed_buckets
from mm_rlhf_jax.sharding import placement

# Keys of an encoded pair batch with a trailing token axis [B, 2, T] (cut to a bucket before scoring).
TOKEN_KEYS = ("input_ids", "attention_mask", "loss_mask")


@dataclasses.dataclass(frozen=True)
class Bound:
    """Parameters prepared once for a pass: the training layout (scoring) and the sampling layout (critiques)."""

    params: object
    sampling_params: object | None


def collate(examples: list[dict]) -> dict:
    """Stacked examples: each key's arrays with a new leading axis."""
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


class RewardModelInference:
    """Jitted critique generation and scoring of pair records with one RM module."""

    def __init__(self, module, encoder_cfg, tokenizer, mesh, *, max_new_tokens: int, batch_size: int,
                 param_shardings=None):
        self.module, self.encoder_cfg, self.tokenizer = module, encoder_cfg, tokenizer
        self.batch_size, self.mesh = batch_size, mesh
        self.buckets = fixed_buckets(encoder_cfg.max_length)
        self.score_traces = 0  # score-step compiles (one per token bucket)

        def score(params, batch):
            self.score_traces += 1  # Python side effect: runs once per trace
            return step_lib.score_step(params, batch, module=module)

        self._score = jax.jit(score)
        self.generator = Generator(module, tokenizer, mesh, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   stop_ids=[special_ids(tokenizer).eos], buckets=self.buckets,
                                   param_shardings=param_shardings)
        # Each row of a batch is encoded three times (chosen prompt, rejected prompt, scoring sequences), in
        # three sweeps over this process's rows: an LRU as large as those rows decodes each image once per
        # batch (bounded by the batch, not the file: uint8 tiles, 21 MB per image at 37 tiles of 384 pixels).
        rows = placement.host_slot(batch_size, mesh).rows
        self.encoder = ExampleEncoder(encoder_cfg, media_lru=max(8, rows))

    # ------------------------------------------------------------------------------------- one batch

    def bind(self, params, *, generate: bool = True) -> Bound:
        return Bound(params, self.generator.prepare(params) if generate else None)

    def local_rows(self, records: list) -> list:
        """This process's rows of a global batch of batch_size records."""
        if len(records) != self.batch_size:
            raise ValueError(f"a scoring batch holds {self.batch_size} pairs, got {len(records)}")
        slot = placement.host_slot(self.batch_size, self.mesh)
        return records[slot.index * slot.rows:(slot.index + 1) * slot.rows]

    def _critiques(self, bound: Bound, local: list, *, media_root: str, fold: int):
        """(chosen critiques, rejected critiques) of every row of the global batch, greedy."""
        out = []
        for side, answer in enumerate(("chosen", "rejected")):
            prompts = [encode_critic_prompt(self.encoder, r, getattr(r, answer), media_root=media_root)
                       for r in local]
            gens = self.generator.sample_rows(bound.sampling_params, prompts, fold=2 * fold + side)
            out.append([g.text for g in gens])
        return out[0], out[1]

    def _score_local(self, params, local: list, *, media_root: str) -> np.ndarray:
        """Rewards f32[G, 2] of the global batch whose rows on this process are `local` (complete records)."""
        batch = collate([self.encoder({"record": r, "query_id": 0, "media_root": media_root, "image": None,
                                       "video": None}) for r in local])
        longest = placement.process_max(int(batch["attention_mask"].sum(-1).max()))
        t = next(b for b in self.buckets if b >= longest)
        batch.update({k: batch[k][..., :t] for k in TOKEN_KEYS if k in batch})
        return placement.fetch(self._score(params, placement.put_batch(batch, self.mesh)))

    def score_batch(self, bound: Bound, records: list, *, media_root: str, generate: bool, fold: int = 0):
        """(rewards f32[G, 2], (chosen critiques, rejected critiques) or None) for G = batch_size records.

        Every process passes the same G records (the whole global batch) and
        encodes only its host slot; fold picks the batch's sampling key
        (greedy decoding does not use it).
        """
        local = self.local_rows(records)
        if not generate:
            return self._score_local(bound.params, local, media_root=media_root), None
        chosen, rejected = self._critiques(bound, local, media_root=media_root, fold=fold)
        slot = placement.host_slot(self.batch_size, self.mesh)
        mine = slice(slot.index * slot.rows, (slot.index + 1) * slot.rows)
        # An empty generation still gets scored: the critique slot then holds only the template suffix.
        scored = [dataclasses.replace(r, chosen_reason=c or " ", rejected_reason=x or " ")
                  for r, c, x in zip(local, chosen[mine], rejected[mine])]
        return self._score_local(bound.params, scored, media_root=media_root), (chosen, rejected)

    # ------------------------------------------------------------------------------- in-memory records

    def rewards(self, params, records, *, media_root: str, generate: bool, progress: str = ""):
        """(rewards f32[N, 2], records carrying the generated critiques as chosen/rejected_reason, or None).

        Records in memory on every process (held-out sets, LearnedRM texts), in
        batches of batch_size (the last padded with repeats of its first row).
        progress: a label to report progress under ("" = none).
        """
        records = list(records)
        bound = self.bind(params, generate=generate)
        rewards, chosen, rejected = [], [], []
        with Progress(len(records), progress, "pairs", enabled=None if progress else False) as bar:
            for b, start in enumerate(range(0, len(records), self.batch_size)):
                chunk = records[start:start + self.batch_size]
                n = len(chunk)
                r, crit = self.score_batch(bound, chunk + [chunk[0]] * (self.batch_size - n),
                                           media_root=media_root, generate=generate, fold=b)
                rewards.append(r[:n])
                if crit is not None:
                    chosen += crit[0][:n]
                    rejected += crit[1][:n]
                bar.update(n)
        out = np.concatenate(rewards) if rewards else np.zeros((0, 2), np.float32)
        if not generate:
            return out, None
        return out, [dataclasses.replace(r, chosen_reason=c or " ", rejected_reason=x or " ")
                     for r, c, x in zip(records, chosen, rejected)]

    def score_records(self, params, records, *, media_root: str, query_ids=None) -> np.ndarray:
        """Rewards f32[N, 2] of (chosen, rejected) for records in the encoder's format (reward / reward_scalar).

        query_ids: unused by scoring (kept for callers that pass a source's ids).
        """
        return self.rewards(params, records, media_root=media_root, generate=False)[0]

    def critique_then_score(self, params, records, *, media_root: str):
        """(rewards f32[N, 2], records carrying the generated critiques as chosen/rejected_reason)."""
        return self.rewards(params, records, media_root=media_root, generate=True)
