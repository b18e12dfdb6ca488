"""DPO training throughput on CPU: this project's jitted DPO step against TRL's DPOTrainer.

  python bench/dpo_vs_trl.py [--steps 8 --warmup 2 --rounds 2 --threads 2]
  python bench/dpo_vs_trl.py --lengths mmrlhf-like [--length-scale 16]    # packed vs padded vs TRL

Both sides train the same tiny Qwen2-architecture policy (hidden 256, 4 layers,
4 query / 2 KV heads, MLP 1024, vocab 8192, f32) from the same initial weights on
the same pairs (random token ids: a 256-token prompt, then a 256-token chosen and
a 256-token rejected response ending in EOS, so every sequence is 512 tokens),
batch 8 pairs (16 sequences, 8192 tokens per step), sigmoid DPO (beta 0.1), AdamW
(lr 1e-4 constant, no weight decay), global-norm clip 1.0, no activation
checkpointing, reference log-probs precomputed once (the cached-reference setup
this project's MM-DPO run uses; TRL: precompute_ref_log_probs=True).

- ours: `algorithms.mm_dpo.step.train_step` jitted with the state donated, as
  `train/mm_dpo.py` does (chosen and rejected in one [16, 512] forward; the
  response positions' hidden states are gathered and go through
  `kernels.token_logprobs`, no [B, T, V] logits; attention "auto" on CPU is the
  causal-chunked dense path at these lengths, `kernels/attention/xla_dense.py`).
- TRL: `DPOTrainer` on a transformers `Qwen2ForCausalLM` (sdpa attention), sequential
  sampler, logging every step; the step time is on_step_begin -> on_step_end.

Each side runs in its own subprocess (so neither framework's thread pools disturb
the other), `--rounds` times, alternating; the first `--warmup` steps of each run
are compile / warm-up and are not timed. The figure is the median over all timed
steps of all rounds. The per-step losses of the two sides are compared (same
weights, data, optimizer: they must agree), so the two do the same work.
Prints one JSON object.

`--lengths mmrlhf-like` replaces the fixed lengths by the MM-RLHF-like mix of
`data/synthetic/length_mix.py` (prefix = chat template + LLaVA-OV-7B image
tokens + a 20-300-word prompt, responses 50-600 tokens), every length divided
by `--length-scale` (default 16, so a CPU step stays near the fixed mode's
8K padded tokens; the prompt-to-response ratios are kept). The text model sees
the image tokens as prompt tokens. Three sides then train on the same pairs in
the same batches of `--batch` pairs:
- trl: DPOTrainer, each batch right-padded to its longest sequence;
- jax:padded: ours on [B, 2, T], T = the longest sequence of all pairs (one compile);
- jax:packed: ours on packed rows (data/packing.py): each batch's pairs packed into
  rows of `--pack-length` tokens, the prompt once per pair and chosen / rejected as
  two branches after it; every batch has the most rows any batch needs (one
  shape, one compile), and the default row length (a multiple of 128 from the
  longest pair up) is the one with the smallest rows x length budget.
Throughput is real tokens/s for every side: the non-padding tokens of the pairs'
two sequences (2 x prompt + chosen + rejected), whichever layout processes them.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# This checkout's package, for the driver as for the workers (which get it on PYTHONPATH).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, MLP = 8192, 256, 4, 4, 2, 1024
PAD, EOS, BOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")


def make_pairs(n: int, prompt_len: int, response_len: int, seed: int = 0) -> dict:
    """int32 prompt [n, P], chosen / rejected [n, R] (last token EOS); ids of ordinary words only."""
    rng = np.random.default_rng(seed)
    words = lambda *shape: rng.integers(len(SPECIALS), VOCAB, shape).astype(np.int32)  # noqa: E731
    chosen, rejected = words(n, response_len), words(n, response_len)
    chosen[:, -1] = rejected[:, -1] = EOS
    return {"prompt": words(n, prompt_len), "chosen": chosen, "rejected": rejected}


def bench_pairs(a, n: int) -> dict:
    """Lists of int32 prompt / chosen / rejected arrays (responses end in EOS): fixed or mmrlhf-like lengths."""
    if a.lengths == "fixed":
        fixed = make_pairs(n, a.prompt_len, a.seq - a.prompt_len)
        return {k: list(v) for k, v in fixed.items()}
    from mm_rlhf_jax.data.synthetic import length_mix

    rng = np.random.default_rng(0)
    out = {"prompt": [], "chosen": [], "rejected": []}
    for p in length_mix.sample(n, seed=0):
        for key, length in (("prompt", p.prefix), ("chosen", p.chosen), ("rejected", p.rejected)):
            ids = rng.integers(len(SPECIALS), VOCAB, max(2, round(length / a.length_scale))).astype(np.int32)
            if key != "prompt":
                ids[-1] = EOS
            out[key].append(ids)
    return out


def sequences(pairs) -> list[np.ndarray]:
    """[prompt + chosen for each pair] + [prompt + rejected for each pair] (TRL's batch order)."""
    return ([np.concatenate([p, c]) for p, c in zip(pairs["prompt"], pairs["chosen"])]
            + [np.concatenate([p, r]) for p, r in zip(pairs["prompt"], pairs["rejected"])])


def max_seq(pairs) -> int:
    return max(len(x) for x in sequences(pairs))


def _step_times(times, warmup):
    return [round(t, 4) for t in times[warmup:]]


def _token_counts(processed, nonpad, warmup) -> dict:
    """Tokens a side's timed steps process per step (padding included) and the share of them that is padding."""
    processed, nonpad = np.asarray(processed[warmup:], float), np.asarray(nonpad[warmup:], float)
    return {"tokens_processed_per_step": round(float(processed.mean()), 1),
            "padding_share": round(float(1 - nonpad.sum() / processed.sum()), 4)}


# --------------------------------------------------------------------------- TRL side


def run_trl(a, workdir: str) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    import datasets
    import tokenizers
    import transformers
    import trl
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, TrainerCallback

    torch.manual_seed(0)
    # Word-level tokenizer: word "w<i>" is id i, so token ids are exactly the generated ones.
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), VOCAB)})
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                  unk_token="<unk>")
    n = a.batch * (a.warmup + a.steps)
    pairs = bench_pairs(a, n)
    seq = max_seq(pairs)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=2 * seq,
                      tie_word_embeddings=False, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)
    policy = Qwen2ForCausalLM(cfg).float()
    init_dir = os.path.join(workdir, "init")
    if not os.path.exists(os.path.join(init_dir, "config.json")):
        policy.save_pretrained(init_dir)  # the JAX side starts from these weights
    else:
        policy = Qwen2ForCausalLM.from_pretrained(init_dir, local_files_only=True).float()

    text = lambda ids: " ".join(f"w{i}" for i in ids)  # noqa: E731
    ds = datasets.Dataset.from_dict({
        "prompt": [text(p) for p in pairs["prompt"]],
        # chosen/rejected end in "<eos>" already, so TRL adds no second EOS.
        "chosen": [" " + " ".join(f"w{i}" for i in c[:-1]) + " <eos>" for c in pairs["chosen"]],
        "rejected": [" " + " ".join(f"w{i}" for i in r[:-1]) + " <eos>" for r in pairs["rejected"]],
    })
    args = trl.DPOConfig(
        output_dir=os.path.join(workdir, "trl_out"), per_device_train_batch_size=a.batch,
        max_steps=a.warmup + a.steps, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        beta=a.beta, loss_type=["sigmoid"], max_length=seq, precompute_ref_log_probs=True,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, fp16=False, dataloader_num_workers=0, seed=0, disable_dropout=True,
        train_sampling_strategy="sequential", disable_tqdm=True)

    expected = sequences(pairs)
    seen = []

    class Trainer(trl.DPOTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            seen.append((inputs["input_ids"].numpy().copy(), inputs["attention_mask"].numpy().copy()))
            return super().compute_loss(model, inputs, *args, **kwargs)

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.losses, self.t0 = [], [], None

        def on_step_begin(self, *_, **__):
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    timer = Timer()
    t_init = time.perf_counter()
    trainer = Trainer(model=policy, ref_model=None, args=args, train_dataset=ds, processing_class=tok,
                      callbacks=[timer])
    t_init = time.perf_counter() - t_init
    trainer.train()
    # The collated batches are exactly our token ids ([chosen; rejected] halves, right-padded).
    for i, (got, mask) in enumerate(seen):
        rows = np.r_[i * a.batch:(i + 1) * a.batch, n + i * a.batch:n + (i + 1) * a.batch]
        if got.shape[0] != 2 * a.batch or any(not np.array_equal(got[j][mask[j] == 1], expected[r])
                                              for j, r in enumerate(rows)):
            raise AssertionError(f"TRL step {i}: batch input_ids {got.shape} differ from the generated pairs")
    return {"step_s": _step_times(timer.times, a.warmup), "losses": timer.losses,
            **_token_counts([got.size for got, _ in seen], [int(mask.sum()) for _, mask in seen], a.warmup),
            "init_and_ref_precompute_s": round(t_init, 2), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "attn_implementation": policy.config._attn_implementation, "optim": str(args.optim)}


# --------------------------------------------------------------------------- JAX side


def run_jax(a, workdir: str) -> dict:
    import functools

    import jax
    import jax.numpy as jnp
    from mm_rlhf_jax import config_lib
    import optax

    from mm_rlhf_jax.models import hf
    from mm_rlhf_jax.algorithms.mm_dpo import step as dpo_step
    from mm_rlhf_jax.train import partition
    from mm_rlhf_jax.train import state as state_lib

    module, params = hf.load_pretrained(os.path.join(workdir, "init"), jnp.float32,
                                        attention_impl=a.attention_impl, remat=a.remat)
    n = a.batch * (a.warmup + a.steps)
    padded = padded_pairs(bench_pairs(a, n))
    batches = [{k: v[i:i + a.batch] for k, v in padded.items()} for i in range(0, n, a.batch)]
    if a.layout == "packed":
        batches = packed_batches(batches, a.pack_length)
    batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in batches]

    logps_fn = jax.jit(functools.partial(dpo_step.policy_logps_step, module=module))
    for b in batches:  # reference = the initial policy, cached once (as algorithms/mm_dpo/run.py)
        b["ref_logps"] = logps_fn(params, b)
    c = config_lib.dpo_block(beta=a.beta, beta_mode="constant", w=0.0, k=0.0, gamma=0.0)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(a.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0))
    mask = jax.tree.map(lambda _: True, params)
    trainable, _ = partition.split(params, mask)
    state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trainable),
                                 rng=jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(dpo_step.train_step, module=module, tx=tx, mask=mask, c=c),
                   donate_argnames=("state",))
    times, losses = [], []
    for b in batches:
        t0 = time.perf_counter()
        state, metrics = step(state, b)
        loss = float(jax.block_until_ready(metrics["dpo/loss"]))
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    return {"step_s": _step_times(times, a.warmup), "compile_and_first_step_s": round(times[0], 2),
            "losses": losses, "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": jax.device_count(), "attention_impl": a.attention_impl, "remat": a.remat,
            "layout": a.layout, "batch_shape": list(batches[0]["input_ids"].shape),
            **_token_counts([b["input_ids"].size for b in batches],
                            [int(np.count_nonzero(b["segment_ids" if "segment_ids" in b else "attention_mask"]))
                             for b in batches], a.warmup)}


def padded_pairs(pairs) -> dict:
    """The [n, 2, T] layout of the pairs (T = the longest sequence, rounded up to 8): right-padded with PAD."""
    n, t = len(pairs["prompt"]), -(-max_seq(pairs) // 8) * 8
    ids = np.full((n, 2, t), PAD, np.int32)
    att = np.zeros((n, 2, t), np.int32)
    loss = np.zeros((n, 2, t), np.float32)
    for i, p in enumerate(pairs["prompt"]):
        for j, resp in enumerate((pairs["chosen"][i], pairs["rejected"][i])):
            ids[i, j, :len(p) + len(resp)] = np.concatenate([p, resp])
            att[i, j, :len(p) + len(resp)] = 1
            loss[i, j, len(p):len(p) + len(resp)] = 1.0  # token t is scored from position t - 1
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


def packed_batches(batches, pack_length: int = 0) -> list[dict]:
    """Each [B, 2, T] batch's pairs packed into rows (data/packing.py); every batch gets the most rows any needs."""
    from mm_rlhf_jax.data import packing
    from mm_rlhf_jax.data.packed_example import compact_tokens

    compact = []
    for b in batches:
        pairs = []
        for i in range(b["input_ids"].shape[0]):
            p = compact_tokens(b["input_ids"][i], b["attention_mask"][i], b["loss_mask"][i])
            p.update(tiles=np.zeros((0, 3, 1, 1), np.uint8), image_size=np.zeros(2, np.int32),
                     is_video=np.bool_(False), delta=np.float32(0), ref_logps=np.zeros(2, np.float32),
                     is_tie=np.bool_(False), has_critique=np.bool_(False), query_id=np.int32(i),
                     category=np.int32(0))
            pairs.append(p)
        compact.append(pairs)
    longest = -(-max(len(p["ids"]) for pairs in compact for p in pairs) // 128) * 128

    def plan(row: int):
        probe = packing.PackingLayout(row_length=row, pairs_per_row=len(compact[0]), rows=1)
        rows = [packing.pack_rows([(len(p["ids"]), 0) for p in pairs], probe) for pairs in compact]
        return max(len(r) for r in rows) * row, row, rows

    # Every batch takes the same [R, row] shape (one compile): the row length (multiples of 128 from the
    # longest pair up) whose R x row budget is the smallest, the shorter row on a tie.
    _, row, rows = min((plan(pack_length),) if pack_length else (plan(longest * f) for f in range(1, 9)),
                       key=lambda x: x[:2])
    layout = packing.PackingLayout(row_length=row, pairs_per_row=len(compact[0]), rows=max(len(r) for r in rows))
    return [packing.collate([[pairs[i] for i in r] for r in rs], layout, indices=rs)
            for pairs, rs in zip(compact, rows)]


# --------------------------------------------------------------------------- driver


def _worker(a, side: str, workdir: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1",
               OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    # One real CPU device (a test environment's 8 fake devices would split the cores).
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = os.path.join(workdir, f"{side}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--workdir", workdir, "--result", out]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k not in ("side", "workdir", "result")]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL if not a.verbose else None,
                   stderr=subprocess.DEVNULL if not a.verbose else None)
    with open(out) as f:
        return json.load(f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps per run (compile, warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each side")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=8, help="pairs per step")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--attention-impl", default="auto",
                   help="ours: kernels.attention impl; a comma list runs ours once per impl (e.g. xla,reference)")
    p.add_argument("--remat", default="none", help="ours: none | full | dots")
    p.add_argument("--lengths", choices=("fixed", "mmrlhf-like"), default="fixed",
                   help="fixed: --prompt-len / --seq; mmrlhf-like: data/synthetic/length_mix.py / --length-scale")
    p.add_argument("--length-scale", type=float, default=16.0, help="mmrlhf-like: divide every length by this")
    p.add_argument("--layouts", default="",
                   help="ours: padded and/or packed, comma-separated (default: padded; mmrlhf-like: padded,packed)")
    p.add_argument("--pack-length", type=int, default=0, help="packed rows' tokens (0 = the smallest budget)")
    p.add_argument("--layout", default="padded", help=argparse.SUPPRESS)
    p.add_argument("--only", choices=("both", "jax", "trl"), default="both")
    p.add_argument("--verbose", type=int, default=0)
    p.add_argument("--side", choices=("jax", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:  # subprocess worker
        result = (run_trl if a.side == "trl" else run_jax)(a, a.workdir)
        with open(a.result, "w") as f:
            json.dump(result, f)
        return

    t_start = time.time()
    layouts = (a.layouts or ("padded,packed" if a.lengths == "mmrlhf-like" else "padded")).split(",")
    impls = a.attention_impl.split(",")
    # side name -> (worker kind, layout, impl); "jax:<impl>" is the padded layout, as before packing existed.
    sides = {"trl": ("trl", "padded", impls[0])}
    sides.update({f"jax:{i}" if lay == "padded" else f"jax:{lay}:{i}": ("jax", lay, i)
                  for lay in layouts for i in impls})
    with tempfile.TemporaryDirectory() as workdir:
        runs = {s: [] for s in sides}
        for _ in range(a.rounds):
            # TRL first in every round: its first run writes the initial weights both sides load.
            for side, (kind, layout, impl) in sides.items():
                if a.only in ("both", kind) or (kind == "trl" and not runs["trl"]):
                    sub = argparse.Namespace(**{**vars(a), "attention_impl": impl, "layout": layout})
                    runs[side].append(_worker(sub, kind, workdir))
    # Real tokens of every step: the non-padding tokens of its pairs' two sequences (the same for every side).
    pairs = bench_pairs(a, a.batch * (a.warmup + a.steps))
    lengths = np.array([len(x) for x in sequences(pairs)]).reshape(2, -1).sum(0)
    real = lengths.reshape(-1, a.batch).sum(1)[a.warmup:]
    out = {"settings": {"hidden": HIDDEN, "layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS,
                        "intermediate": MLP, "vocab": VOCAB, "lengths": a.lengths, "batch_pairs": a.batch,
                        "real_tokens_per_step_mean": round(float(real.mean()), 1), "dtype": "float32",
                        "timed_steps_per_run": a.steps, "warmup_steps": a.warmup, "rounds": a.rounds,
                        "threads": a.threads, "lr": a.lr, "beta": a.beta},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                       "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}}
    if a.lengths == "fixed":
        out["settings"].update(seq=a.seq, prompt_len=a.prompt_len, tokens_per_step=int(real[0]))
    else:
        out["settings"].update(length_scale=a.length_scale, longest_sequence=max_seq(pairs),
                               pack_length=a.pack_length or "the smallest rows x length budget")
    for side, rs in runs.items():
        if not rs or (a.only not in ("both", sides[side][0])):
            continue
        steps = [t for r in rs for t in r["step_s"]]
        rates = [tok / t for r in rs for tok, t in zip(real, r["step_s"])]  # real tokens / s of each timed step
        out[side] = {"step_s_median": round(statistics.median(steps), 4),
                     "tokens_per_s": round(statistics.median(rates), 1),
                     "step_s_min": min(steps), "step_s_per_run": [r["step_s"] for r in rs],
                     **{k: v for k, v in rs[0].items() if k not in ("step_s", "losses")},
                     "losses_first_run": [round(x, 6) for x in rs[0]["losses"]]}
    for side in list(sides)[1:]:
        if side in out and "trl" in out:
            out[side]["ratio_ours_over_trl"] = round(out[side]["tokens_per_s"] / out["trl"]["tokens_per_s"], 3)
            lj, lt = runs[side][0]["losses"], runs["trl"][0]["losses"]
            out[side]["max_abs_loss_diff_vs_trl"] = float(np.max(np.abs(np.asarray(lj) - np.asarray(lt))))
    packed, padded = f"jax:packed:{impls[0]}", f"jax:{impls[0]}"
    if packed in out and "trl" in out:
        out["ratio_packed_over_trl"] = out[packed]["ratio_ours_over_trl"]
        out["max_abs_loss_diff_vs_trl"] = out[packed]["max_abs_loss_diff_vs_trl"]
    if padded in out and "trl" in out:
        out["ratio_padded_over_trl"] = out[padded]["ratio_ours_over_trl"]
    if packed in out and padded in out:
        out["ratio_packed_over_padded"] = round(out[packed]["tokens_per_s"] / out[padded]["tokens_per_s"], 3)
    out["wall_s"] = round(time.time() - t_start, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
