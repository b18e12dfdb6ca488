"""LongPO's data: the documents and eval records, each round's self-generated pairs and their reference log-probs.

  prepare(config, workdir)         (tokenizer, documents, eval records); the synthetic task is built once
                                   into workdir/data
  generate_round(...)              round r's short-to-long pairs (data/longpo/generate.py, resumable)
  fitting(...)                     the samples that tokenize within the layout
  reference_logps(...)             sum over turns of log pi_S(y | short or long context), cached per round
"""

import dataclasses
import functools
import io
import json
import logging
import os

import jax
import ml_collections
import numpy as np

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.algorithms.longpo import step as step_lib
from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.longpo import prompts
from mm_rlhf_jax.data.longpo.filters import FilterConfig
from mm_rlhf_jax.data.longpo.generate import GenerationConfig, generate_samples
from mm_rlhf_jax.data.longpo.pipeline import SampleSource, padded_batches
from mm_rlhf_jax.data.longpo.samples import SampleLayout, tokenize_sample
from mm_rlhf_jax.data.synthetic import build_once, longdoc
from mm_rlhf_jax.data.tokenizer import cached_tokenizer, resolve_tokenizer
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rollout.generate import Generator, chat_encoder
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.train import phase

QUERY_PROMPTS: Registry[str] = Registry("longpo query prompt")
QUERY_PROMPTS.register("released")(prompts.QUERY_PROMPT)
QUERY_PROMPTS.register("tiny")(longdoc.SELF_INSTRUCT_PROMPT)


def read_jsonl(path: str, fields) -> list[dict]:
    """The objects of a jsonl file (local or URL); a missing field is an error naming the file, line and field."""
    out = []
    with storage.open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            for field in fields:
                if field not in rec:
                    raise DataError(Where(path, n), field, "missing")
            out.append(rec)
    return out


def prepare(config: ml_collections.ConfigDict, workdir: str):
    """(tokenizer path, documents, eval records): the synthetic task is built once into workdir/data."""
    d = config.data
    synthetic = d.synthetic and not d.documents
    tok = resolve_tokenizer(d.tokenizer, config.model.init_from, storage.join(workdir, "data", "tokenizer"),
                            (lambda p: longdoc.build_tokenizer(p, prompts.PHRASES)) if synthetic else None)
    if synthetic:
        task = synthetic_task(d)

        def build(folder):
            write_synthetic_documents(folder, d, task)
            heldout = longdoc.make_documents(d.synthetic_seed + 1, d.synthetic_eval_docs, task, prefix="eval")
            with open(os.path.join(folder, "eval_records.jsonl"), "w") as f:
                for r in longdoc.eval_records(heldout, d.synthetic_seed + 2):
                    f.write(json.dumps(r) + "\n")

        docs_dir = build_once(storage.join(workdir, "data", "task"), build)
        documents = storage.join(docs_dir, "documents.jsonl")
        records = storage.join(docs_dir, "eval_records.jsonl")
    else:
        if not d.documents:
            raise ValueError("set data.documents (jsonl of {'id', 'text'} long documents) or data.synthetic=True")
        documents, records = d.documents, d.eval_records
    evals = read_jsonl(records, ("long_context", "short_context", "question", "value")) if records else []
    return tok, read_jsonl(documents, ("id", "text")), evals


def synthetic_task(d: ml_collections.ConfigDict) -> longdoc.TaskConfig:
    """The synthetic long-document task of a data block."""
    return longdoc.TaskConfig(passages_per_doc=d.synthetic_passages_per_doc, min_filler=d.synthetic_min_filler,
                              max_filler=d.synthetic_max_filler)


def write_synthetic_documents(folder: str, d: ml_collections.ConfigDict, task: longdoc.TaskConfig) -> None:
    """folder/documents.jsonl: the data block's synthetic training documents of `task`."""
    longdoc.write_documents(os.path.join(folder, "documents.jsonl"),
                            longdoc.make_documents(d.synthetic_seed, d.synthetic_train_docs, task))


def round_documents(config: ml_collections.ConfigDict, rc: ml_collections.ConfigDict, r: int, workdir: str,
                    documents: list[dict]) -> list[dict]:
    """Round r's documents: `documents` (round 0's) unless the round's config (rc, run.round_config) names
    another file, or, on the synthetic task, asks for documents of another passage count (built once into
    workdir/data/task_round_<r>, the same seed)."""
    d, rd = config.data, rc.data
    if rd.documents != d.documents:
        return read_jsonl(rd.documents, ("id", "text"))
    if d.synthetic and not d.documents and rd.synthetic_passages_per_doc != d.synthetic_passages_per_doc:
        folder = build_once(storage.join(workdir, "data", f"task_round_{r}"),
                            lambda f: write_synthetic_documents(f, rd, synthetic_task(rd)))
        return read_jsonl(storage.join(folder, "documents.jsonl"), ("id", "text"))
    return documents


def layout(config: ml_collections.ConfigDict) -> SampleLayout:
    return SampleLayout(max_length=config.data.max_length, max_turns=config.generation.turns_per_doc,
                        max_short_length=config.data.max_short_length, nll_tokens=config.longpo.nll_tokens,
                        max_response_tokens=config.longpo.max_response_tokens)


def generation_config(g: ml_collections.ConfigDict, seed: int) -> GenerationConfig:
    filters = dataclasses.replace(FilterConfig(), min_chars=g.min_answer_chars, kmp_repeats=g.repetition_threshold,
                                  ngram_repeats=g.repetition_threshold, drop_truncated=g.drop_truncated)
    return GenerationConfig(
        max_chunk_tokens=g.max_chunk_tokens, min_chunk_tokens=g.min_chunk_tokens,
        max_chunks_per_doc=g.max_chunks_per_doc, turns_per_doc=g.turns_per_doc, min_turns=g.min_turns,
        min_doc_tokens=g.min_doc_tokens, max_doc_tokens=g.max_doc_tokens, query_prompt=QUERY_PROMPTS.get(g.query_prompt),
        numbered_questions=g.numbered_questions, num_questions=g.num_questions, seed=seed, filters=filters,
        keep_refused_rejected=g.keep_refused_rejected)


def conversation_generator(module, tokenizer, mesh, *, max_new_tokens: int, sampling: SamplingConfig,
                           batch_size: int, max_prompt_length: int | None = None) -> Generator:
    """A generator of chat conversations (lists of messages), prompts bucketed by length."""
    return Generator(module, tokenizer, mesh, max_new_tokens=max_new_tokens, batch_size=batch_size,
                     encode=chat_encoder(tokenizer, max_length=max_prompt_length), sampling=sampling)


def generate_round(ctx: phase.RunContext, config: ml_collections.ConfigDict, r: int, tokenizer_path: str, documents,
                   module, params):
    """Self-generated samples of round r by (module, params) = pi_S (resumable; in round_<r>/data)."""
    g = config.generation
    tok = cached_tokenizer(tokenizer_path)
    kw = dict(batch_size=g.batch_size, max_prompt_length=config.data.max_length)
    questions = conversation_generator(
        module, tok, ctx.mesh, max_new_tokens=g.max_question_tokens,
        sampling=SamplingConfig(g.question_strategy, g.question_temperature, top_p=g.question_top_p), **kw)
    answers = conversation_generator(
        module, tok, ctx.mesh, max_new_tokens=g.max_answer_tokens,
        sampling=SamplingConfig(g.answer_strategy, g.answer_temperature, top_p=g.answer_top_p), **kw)
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    return generate_samples(documents, ctx.path(f"round_{r}", "data"), count_tokens=count,
                            question_generator=questions.bind(params), answer_generator=answers.bind(params),
                            cfg=generation_config(g, g.seed + r))


def fitting(config: ml_collections.ConfigDict, tokenizer_path: str, samples):
    """Samples that tokenize within the layout (generated answers can overflow it); the rest are counted."""
    tok, lay = cached_tokenizer(tokenizer_path), layout(config)
    kept, dropped = [], []
    for s in samples:
        try:
            tokenize_sample(tok, s, lay)
            kept.append(s)
        except DataError as e:
            dropped.append(str(e))
    if dropped:
        logging.warning("longpo: %d samples do not fit the layout and are skipped, e.g. %s", len(dropped), dropped[0])
    return kept, len(dropped)


def reference_logps(ctx: phase.RunContext, config: ml_collections.ConfigDict, r: int, tokenizer_path: str, module,
                    params, samples) -> np.ndarray:
    """f32[N, 2]: sum over turns of log pi_S(y | context), cached in round_<r>/ref_logps[_long].npy.

    The context is the short one (`longpo.reference = short`, LongPO) or the
    long input itself (`long`, the DPO baseline; step.REFERENCES). Each process
    tokenizes only its rows of every batch (its host slot); the log-probs are
    gathered to every process and process 0 writes the file.
    """
    mode = config.longpo.reference
    ref_fn = step_lib.reference_fn(mode)[0]
    path = ctx.path(f"round_{r}", "ref_logps.npy" if mode == "short" else f"ref_logps_{mode}.npy")
    if storage.exists(path):
        ref = np.load(io.BytesIO(storage.read_bytes(path)))
        if ref.shape == (len(samples), 2):
            return ref
    fn = jax.jit(functools.partial(ref_fn, module))
    batch_size = config.longpo.reference_batch_size
    out = []
    for batch, n in padded_batches(SampleSource(samples), tokenizer_path, layout(config), batch_size,
                                   shard=placement.host_slot(batch_size, ctx.mesh).shard):
        inputs = step_lib.reference_inputs(mode, batch)
        out.append(placement.fetch(fn(params, placement.put_batch(inputs, ctx.mesh)))[:n])
    ref = np.concatenate(out).astype(np.float32)
    if distributed.is_primary():
        buf = io.BytesIO()
        np.save(buf, ref)
        storage.write_atomic(path, buf.getvalue())
    return ref
