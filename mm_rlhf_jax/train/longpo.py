"""LongPO run: (warm start) -> per round: generate pairs -> reference log-probs -> train -> evaluate.

    python -m mm_rlhf_jax.main --config configs/longpo.py:tiny --workdir runs/longpo_tiny

Work in the workdir, each stage skipped when its output exists (re-running resumes):
  data/                      tokenizer, documents.jsonl, eval_records.jsonl (synthetic task only)
  warm_start/                SFT of the tiny model on short-context task examples (tiny preset only;
                             LongPO assumes an aligned short-context model pi_S)
  initial_eval.json          the starting model (its own RoPE theta) on the evals
  round_<r>/data/            self-generated pairs (data/longpo/generate.py: resumable per stage)
  round_<r>/ref_logps.npy    short-context reference log-probs of every sample (round r's pi_S)
  round_<r>/checkpoints/     train state + data iterator (orbax); SIGTERM checkpoints and exits
  round_<r>/eval.json        the trained policy on the evals
  eval.json                  the last round's evals + initial_* + per-round figures

Round r's generator and reference is the model that round r-1 trained (round 0: the
initial model); it keeps its own RoPE theta while the policy gets
`longpo.policy_rope_theta[r]` (paper: 1e7 at 128K). Evals: held-out preference
accuracy (implicit reward of the policy against the cached short-context reference
on generated samples kept out of training) and, for the synthetic task, greedy
long-context and short-context answer accuracy.
"""

import dataclasses
import functools
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.longpo import prompts
from mm_rlhf_jax.data.longpo.filters import FilterConfig
from mm_rlhf_jax.data.longpo.generate import GenerationConfig, generate_samples
from mm_rlhf_jax.data.longpo.pipeline import SampleSource, make_iterator, padded_batches
from mm_rlhf_jax.data.longpo.samples import SampleLayout, render, tokenize_sample
from mm_rlhf_jax.data.longpo.textgen import SamplerTextGenerator
from mm_rlhf_jax.data.pipeline import PipelineConfig
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.config import DecoderConfig
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rollout.strategies import SamplingConfig
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh
from mm_rlhf_jax.data.synthetic import longdoc as longdoc_task
from mm_rlhf_jax.train import data_setup, longpo_step, metrics as metrics_lib, model_factory, setup, sft
from mm_rlhf_jax.train.optim import make_optimizer

QUERY_PROMPTS: Registry[str] = Registry("longpo query prompt")
QUERY_PROMPTS.register("released")(prompts.QUERY_PROMPT)
QUERY_PROMPTS.register("tiny")(longdoc_task.SELF_INSTRUCT_PROMPT)


@dataclasses.dataclass
class Run:
    c: ml_collections.ConfigDict
    workdir: str
    mesh: jax.sharding.Mesh
    writer: metrics_lib.MetricWriter
    tokenizer_path: str
    base: DecoderConfig  # the starting model's architecture (its own RoPE theta, default attention, no remat)

    def put(self, batch):
        return data_setup.put_batch(batch, self.mesh)

    def module(self, theta: float, *, train: bool = False):
        """Decoder with RoPE theta; train=True uses the config's attention kernel and remat."""
        cfg = self.base.replace(rope_theta=theta)
        if train:
            cfg = cfg.replace(attention_impl=self.c.longpo.attention_impl, remat=self.c.model.remat)
        return hf.build_model(cfg)

    def path(self, *parts) -> str:
        return os.path.join(self.workdir, *parts)


def _read_jsonl(path: str, fields) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            for field in fields:
                if field not in rec:
                    raise DataError(Where(path, n), field, "missing")
            out.append(rec)
    return out


def prepare_data(c: ml_collections.ConfigDict, workdir: str):
    """(tokenizer path, documents, eval records): the synthetic task is built once into workdir/data."""
    d = c.data
    if d.synthetic and not d.documents:
        root = os.path.join(workdir, "data")
        tok = data_setup._build_once(os.path.join(root, "tokenizer"),
                                     lambda p: longdoc_task.build_tokenizer(p, prompts.PHRASES))
        task = longdoc_task.TaskConfig(passages_per_doc=d.synthetic_passages_per_doc,
                                       min_filler=d.synthetic_min_filler, max_filler=d.synthetic_max_filler)

        def build(folder):
            longdoc_task.write_documents(os.path.join(folder, "documents.jsonl"),
                                         longdoc_task.make_documents(d.synthetic_seed, d.synthetic_train_docs, task))
            heldout = longdoc_task.make_documents(d.synthetic_seed + 1, d.synthetic_eval_docs, task, prefix="eval")
            with open(os.path.join(folder, "eval_records.jsonl"), "w") as f:
                for r in longdoc_task.eval_records(heldout, d.synthetic_seed + 2):
                    f.write(json.dumps(r) + "\n")

        docs_dir = data_setup._build_once(os.path.join(root, "task"), build)
        documents = os.path.join(docs_dir, "documents.jsonl")
        records = os.path.join(docs_dir, "eval_records.jsonl")
    else:
        if not d.documents:
            raise ValueError("set data.documents (jsonl of {'id', 'text'} long documents) or data.synthetic=True")
        tok, documents, records = d.tokenizer or c.model.init_from, d.documents, d.eval_records
    if not tok:
        raise ValueError("set data.tokenizer or model.init_from")
    evals = _read_jsonl(records, ("long_context", "short_context", "question", "value")) if records else []
    return tok, _read_jsonl(documents, ("id", "text")), evals


def base_config(c: ml_collections.ConfigDict) -> DecoderConfig:
    m = c.model
    if m.init_from:
        cfg = hf.load_config(m.init_from, model_factory.dtype(m.dtype), param_dtype=model_factory.dtype(m.param_dtype),
                             scan_layers=m.scan_layers, attention_impl=m.attention_impl)
    else:
        cfg = model_factory.tiny_config(m)
    if not isinstance(cfg, DecoderConfig):
        raise ValueError(f"LongPO trains a text decoder; model {m.init_from or 'tiny'} is {type(cfg).__name__} "
                         "(set model.tiny.multimodal=False or point init_from at a Qwen2/Llama/Mistral checkpoint)")
    return cfg


# ---------------------------------------------------------------------------------------------- warm start


def sft_arrays(tok, conversations, max_length: int) -> dict[str, np.ndarray]:
    ids = np.zeros((len(conversations), max_length), np.int32)
    att, loss = np.zeros_like(ids), np.zeros(ids.shape, np.float32)
    for i, conv in enumerate(conversations):
        seq, mask = render(tok, conv, Where("<warm start>", i + 1), "conversation")
        if len(seq) > max_length:
            raise ValueError(f"warm-start example {i} has {len(seq)} tokens > warm_start.max_length={max_length}")
        ids[i, :len(seq)], att[i, :len(seq)], loss[i, :len(seq)] = seq, 1, mask
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


def _train(run: Run, name: str, module, params, step_fn, data_iter, tx, steps: int, eval_fn=None,
           checkpoint_every: int = 0, eval_every: int = 0):
    """State around `params` (or restored from run/<name>/checkpoints) trained for `steps`; returns final params."""
    return setup.run_phase(run.path(name), module, params, step_fn, data_iter, tx,
                           trainable=model_factory.TRAINABLE.get(run.c.model.trainable), mesh=run.mesh,
                           rules=TRAIN_RULES, steps=steps, seed=run.c.seed + 1, log_every=run.c.train.log_every,
                           checkpoint_every=checkpoint_every, max_to_keep=run.c.train.max_checkpoints,
                           eval_fn=eval_fn, eval_every=eval_every)


def warm_start(run: Run, params):
    w = run.c.warm_start
    tok = cached_tokenizer(run.tokenizer_path)
    task = longdoc_task.TaskConfig(min_filler=run.c.data.synthetic_min_filler, max_filler=run.c.data.synthetic_max_filler,
                                   sft_min_passages=w.min_passages, sft_max_passages=w.max_passages)
    convs = longdoc_task.sft_examples(w.seed, w.num_examples, prompts.PHRASES, task)
    data_iter = sft.ArrayBatches(sft_arrays(tok, convs, w.max_length),
                                 data_setup.per_host_batch(w.batch_size, run.mesh), w.seed)
    opt = ml_collections.ConfigDict(dict(run.c.optim.to_dict(), name="adamw", lr=w.lr, schedule="cosine",
                                         warmup_ratio=w.warmup_steps / w.steps, final_lr_ratio=0.05))
    module = run.module(run.base.rope_theta)
    logging.info("warm start: SFT on %d short-context task examples for %d steps", len(convs), w.steps)
    params, _ = _train(run, "warm_start", module, params, sft.sft_train_step, data_iter,
                       make_optimizer(opt, w.steps), w.steps, checkpoint_every=max(w.steps // 4, 1))
    return params


# ------------------------------------------------------------------------------------------- generation


def _sampling(strategy: str, temperature: float, top_p: float) -> SamplingConfig:
    return SamplingConfig(strategy=strategy, temperature=temperature, top_p=top_p)


def generation_config(g: ml_collections.ConfigDict, seed: int) -> GenerationConfig:
    filters = dataclasses.replace(FilterConfig(), min_chars=g.min_answer_chars, kmp_repeats=g.repetition_threshold,
                                  ngram_repeats=g.repetition_threshold, drop_truncated=g.drop_truncated)
    return GenerationConfig(
        max_chunk_tokens=g.max_chunk_tokens, min_chunk_tokens=g.min_chunk_tokens,
        max_chunks_per_doc=g.max_chunks_per_doc, turns_per_doc=g.turns_per_doc, min_turns=g.min_turns,
        min_doc_tokens=g.min_doc_tokens, max_doc_tokens=g.max_doc_tokens, query_prompt=QUERY_PROMPTS.get(g.query_prompt),
        numbered_questions=g.numbered_questions, num_questions=g.num_questions, seed=seed, filters=filters,
        keep_refused_rejected=g.keep_refused_rejected)


def generate_round_data(run: Run, r: int, documents, module, params):
    """Self-generated samples of round r by (module, params) = pi_S (resumable)."""
    g = run.c.generation
    tok = cached_tokenizer(run.tokenizer_path)
    batch = data_setup.per_host_batch(g.batch_size, run.mesh)
    common = dict(batch_size=batch, put=run.put, max_prompt_tokens=run.c.data.max_length)
    question_gen = SamplerTextGenerator(
        module, params, tok, max_new_tokens=g.max_question_tokens,
        sampling=_sampling(g.question_strategy, g.question_temperature, g.question_top_p), **common)
    answer_gen = SamplerTextGenerator(
        module, params, tok, max_new_tokens=g.max_answer_tokens,
        sampling=_sampling(g.answer_strategy, g.answer_temperature, g.answer_top_p), **common)
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    samples, stats = generate_samples(documents, run.path(f"round_{r}", "data"), count_tokens=count,
                                      question_generator=question_gen, answer_generator=answer_gen,
                                      cfg=generation_config(g, g.seed + r))
    return samples, stats


def layout(c: ml_collections.ConfigDict) -> SampleLayout:
    return SampleLayout(max_length=c.data.max_length, max_turns=c.generation.turns_per_doc,
                        max_short_length=c.data.max_short_length, nll_tokens=c.longpo.nll_tokens,
                        max_response_tokens=c.longpo.max_response_tokens)


def fitting_samples(run: Run, samples):
    """Samples that tokenize within the layout (generated answers can overflow it); the rest are counted."""
    tok, lay = cached_tokenizer(run.tokenizer_path), layout(run.c)
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


def reference_logps(run: Run, r: int, module, params, samples) -> np.ndarray:
    """f32[N, 2]: sum over turns of log pi_S(y | short context), cached in round_<r>/ref_logps.npy."""
    path = run.path(f"round_{r}", "ref_logps.npy")
    if os.path.exists(path):
        ref = np.load(path)
        if ref.shape == (len(samples), 2):
            return ref
    fn = jax.jit(functools.partial(longpo_step.reference_logps, module))
    bs = data_setup.per_host_batch(run.c.longpo.reference_batch_size, run.mesh)
    out = []
    for batch, n in padded_batches(SampleSource(samples), run.tokenizer_path, layout(run.c), bs):
        ref_keys = {k: v for k, v in batch.items() if k.startswith("ref_")}
        out.append(np.asarray(jax.device_get(fn(params, run.put(ref_keys))))[:n])
    ref = np.concatenate(out).astype(np.float32)
    np.save(path + ".tmp.npy", ref)
    os.replace(path + ".tmp.npy", path)
    return ref


# ------------------------------------------------------------------------------------------------ evals


class Evaluator:
    """evaluate(module for generation, module for log-probs, params) -> flat metrics."""

    def __init__(self, run: Run, records, heldout: SampleSource | None):
        self.run, self.records, self.heldout = run, records[: run.c.eval.num_records], heldout
        self._generators: dict = {}
        self._logps: dict = {}

    def _generator(self, module, params):
        key = module.config
        if key not in self._generators:
            e = self.run.c.eval
            self._generators[key] = SamplerTextGenerator(
                module, params, cached_tokenizer(self.run.tokenizer_path), max_new_tokens=e.max_new_tokens,
                sampling=SamplingConfig("greedy"), batch_size=data_setup.per_host_batch(e.batch_size, self.run.mesh),
                put=self.run.put)
        gen = self._generators[key]
        gen.params = params
        return gen

    def task_accuracy(self, module, params) -> dict:
        if not self.records:
            return {}
        gen = self._generator(module, params)
        out = {}
        for ctx in ("long_context", "short_context"):
            convs = [prompts.answer_prompt(rec[ctx], prompts.PHRASES[0], rec["question"]) for rec in self.records]
            texts = []
            for i in range(0, len(convs), gen.batch_size):
                texts += [g.text for g in gen(convs[i:i + gen.batch_size], seed=i)]
            out[f"{ctx}_accuracy"] = float(np.mean([longdoc_task.is_correct(t, rec["value"])
                                                    for t, rec in zip(texts, self.records)]))
            out[f"{ctx}_example"] = texts[0]
        return out

    def preference_accuracy(self, module, params) -> dict:
        if self.heldout is None or not len(self.heldout):
            return {}
        c = self.run.c
        if module.config not in self._logps:
            self._logps[module.config] = jax.jit(functools.partial(longpo_step.pair_logps_step, module=module,
                                                                   c=c.longpo))
        fn = self._logps[module.config]
        bs = data_setup.per_host_batch(c.data.eval_batch_size, self.run.mesh)
        margins = []
        for batch, n in padded_batches(self.heldout, self.run.tokenizer_path, layout(c), bs):
            ref = batch.pop("ref_logps")[:n]
            batch = {k: v for k, v in batch.items() if not k.startswith("ref_")}
            pol = np.asarray(jax.device_get(fn(params, self.run.put(batch))))[:n]
            margins.append((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
        m = np.concatenate(margins)
        return {"preference_accuracy": float(np.mean(m > 0)), "reward_margin": float(c.longpo.beta * m.mean()),
                "num_heldout_samples": int(len(m))}

    def __call__(self, gen_module, logp_module, params) -> dict:
        return {**self.preference_accuracy(logp_module, params), **self.task_accuracy(gen_module, params)}


# ------------------------------------------------------------------------------------------------- rounds


def split_heldout(samples, ref, fraction: float):
    """(train samples, train ref, held-out samples, held-out ref): the last `fraction` of samples is held out."""
    n_held = int(round(len(samples) * fraction))
    cut = len(samples) - n_held
    return samples[:cut], ref[:cut], samples[cut:], ref[cut:]


def policy_theta(c: ml_collections.ConfigDict, r: int, previous: float) -> float:
    thetas = tuple(c.longpo.policy_rope_theta)
    theta = thetas[min(r, len(thetas) - 1)] if thetas else 0.0
    return float(theta) if theta else previous


def train_round(run: Run, r: int, documents, records, params, ref_theta: float):
    """Round r: generate with (params, ref_theta), cache reference logps, train the policy; returns (params, evals)."""
    c = run.c
    theta = policy_theta(c, r, ref_theta)
    reference = run.module(ref_theta)
    samples, stats = generate_round_data(run, r, documents, reference, params)
    samples, too_long = fitting_samples(run, samples)
    if len(samples) < 2:
        raise ValueError(f"round {r}: only {len(samples)} usable LongPO samples were generated; see "
                         f"{run.path(f'round_{r}', 'data', 'stats.json')} ({stats})")
    ref = reference_logps(run, r, reference, params, samples)
    train_s, train_ref, held_s, held_ref = split_heldout(samples, ref, c.data.heldout_fraction)
    evaluator = Evaluator(run, records, SampleSource(held_s, held_ref) if held_s else None)
    policy, policy_gen = run.module(theta, train=True), run.module(theta)
    cfg = PipelineConfig(batch_size=data_setup.per_host_batch(c.data.batch_size, run.mesh), seed=c.data.seed + r,
                         num_epochs=None, num_workers=c.data.num_workers)
    data_iter = make_iterator(SampleSource(train_s, train_ref), run.tokenizer_path, layout(c), cfg)
    logging.info("round %d: %d train / %d held-out samples, policy RoPE theta %g (reference %g)", r, len(train_s),
                 len(held_s), theta, ref_theta)
    # The starting model's held-out preference accuracy on these pairs (policy == reference, ref theta).
    start = {f"start_{k}": v for k, v in evaluator.preference_accuracy(reference, params).items()}
    step = functools.partial(longpo_step.longpo_train_step, c=c.longpo)
    tx = make_optimizer(c.optim, c.train.steps)
    params, final = _train(run, f"round_{r}", policy, params, step, data_iter, tx, c.train.steps,
                           eval_fn=lambda p: evaluator(policy_gen, policy, p),
                           checkpoint_every=c.train.checkpoint_every, eval_every=c.train.eval_every)
    result = {**final, "policy_rope_theta": theta, "reference_rope_theta": ref_theta, "train_samples": len(train_s),
              "heldout_samples": len(held_s), "samples_too_long": too_long, "generation": stats, **start}
    return params, theta, result


def run(config: ml_collections.ConfigDict, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    mesh = make_mesh(config.mesh.to_dict())
    writer = metrics_lib.MetricWriter(workdir)
    writer.write_json("config.json", json.loads(config.to_json_best_effort()))
    with jax.set_mesh(mesh), nn.logical_axis_rules(TRAIN_RULES):
        tok_path, documents, records = prepare_data(config, workdir)
        r = Run(config, workdir, mesh, writer, tok_path, base_config(config).replace(remat="none"))
        if config.model.init_from:
            _, params = hf.load_pretrained(config.model.init_from, model_factory.dtype(config.model.dtype),
                                           param_dtype=model_factory.dtype(config.model.param_dtype), mesh=mesh,
                                           rules=TRAIN_RULES, scan_layers=config.model.scan_layers)
        else:
            params = hf.init_params(r.module(r.base.rope_theta), jax.random.PRNGKey(config.seed), mesh, TRAIN_RULES)
            if config.warm_start.steps:
                params = warm_start(r, params)
        theta = r.base.rope_theta
        start = r.module(theta)
        initial = writer.json_once("initial_eval.json", lambda: Evaluator(r, records, None)(start, start, params))
        rounds = []
        for k in range(config.longpo.rounds):
            params, theta, result = train_round(r, k, documents, records, params, theta)
            writer.write_json(os.path.join(f"round_{k}", "eval.json"), result)
            rounds.append(result)
    final = rounds[-1]
    scalars = lambda d: {k: v for k, v in d.items() if isinstance(v, (int, float))}
    result = {**scalars(final), **{f"initial_{k}": v for k, v in scalars(initial).items()},
              "rounds": config.longpo.rounds, "steps_per_round": config.train.steps}
    if "short_context_accuracy" in result and "initial_short_context_accuracy" in result:
        drop = result["initial_short_context_accuracy"] - result["short_context_accuracy"]
        result["short_context_ok"] = bool(drop <= config.eval.short_context_margin)
    writer.write_json("eval.json", result)
    writer.close()
    summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(result.items()))
    print(f"[longpo] {summary}", flush=True)
    return result
