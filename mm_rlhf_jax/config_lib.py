"""Every config block, declared once with a comment per knob, and one schema per algorithm.

    c = config_lib.schema("mm_dpo")     # the algorithm's full default config
    # configs/mm_dpo.py:get_config(preset) then changes values; it never adds keys.

A block two algorithms read differently is declared twice under different
names (`pair_data_block` for MM-RLHF pair files, `prompt_data_block` for RL
prompt pools, ...); the config keys stay short (`c.data`, `c.warm_start`).
This module imports ml_collections only, so a config file never loads the
training stack (tests/configs checks that every preset builds, that presets
keep the schema's keys, and that every key is read somewhere).
"""

from typing import Callable

import ml_collections
from ml_collections import config_dict

CD = ml_collections.ConfigDict


def _block(defaults: dict, overrides: dict) -> CD:
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise KeyError(f"unknown keys {sorted(unknown)}; this block has {sorted(defaults)}")
    return CD({**defaults, **overrides})


# ---------------------------------------------------------------------------------------------- shared


def mesh_block(**sizes) -> CD:
    """Mesh axis sizes (sharding.mesh.MESH_AXES); -1: all remaining devices."""
    return _block(dict(data=1, fsdp=-1, tensor=1, sequence=1), sizes)


def optim_block(**overrides) -> CD:
    return _block(dict(
        name="adamw",  # adamw | adam | rmsprop | sgd (train.optim.OPTIMIZERS)
        lr=1e-6,
        schedule="cosine",  # cosine | linear | constant, after warmup
        warmup_ratio=0.1,  # fraction of steps with linear warmup (the papers' HF scripts)
        final_lr_ratio=0.0,  # lr at the end of the decay, as a fraction of lr
        weight_decay=0.0,  # adamw only
        b1=0.9,
        b2=0.999,  # also rmsprop's decay (torch RMSprop's alpha)
        eps=1e-8,
        grad_clip=1.0,  # global-norm clip (0 = off)
    ), overrides)


def train_block(**overrides) -> CD:
    return _block(dict(
        steps=100,  # optimizer steps (RL: rollout + update cycles) of the main phase
        log_every=10,  # metrics.jsonl / TensorBoard cadence
        eval_every=0,  # 0 = evaluate only at the end
        checkpoint_every=0,  # 0 = checkpoint only at the end (and on SIGTERM)
        max_checkpoints=2,  # orbax max_to_keep
        # Gradient accumulation: each step's global batch (RL: each minibatch) is split into this many
        # microbatches, scanned inside the jitted step; the step equals the full-batch step.
        microbatches=1,
    ), overrides)


def model_block(**tiny_overrides) -> CD:
    """The policy (tiny LLaVA-OV-shaped VLM unless init_from is set)."""
    tiny = _block(dict(
        multimodal=True,  # False: the text decoder alone
        vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
        rope_theta=10000.0, max_position_embeddings=1024,
        vision_hidden_size=64, vision_intermediate_size=128, vision_num_layers=2, vision_num_heads=4,
        image_size=32, patch_size=8,  # SigLIP tile and patch (data.synthetic.mmrlhf draws 32-pixel tiles)
        image_token_id=5, video_token_id=6,  # ids of <image> / <video> in the tiny tokenizer
    ), tiny_overrides)
    return CD(dict(
        init_from="",  # local transformers checkpoint folder; "" = random init of `tiny`
        # A bundled architecture (models/known/<name>.json) for ahead-of-time compiles on a machine
        # without the checkpoint; init_from's own config.json wins when it exists.
        architecture="",
        # > 0: only the first N decoder layers of the checkpoint's architecture (aot.py's per-layer cost
        # probes); runs that load weights refuse it.
        num_layers=0,
        dtype="float32",  # compute dtype (bfloat16 on accelerators)
        param_dtype="float32",  # storage dtype
        remat="none",  # none | full (save nothing) | dots (matmul outputs) | attention (attention outputs only)
        scan_layers=False,  # one scanned layer stack (faster compiles at depth)
        attention_impl="auto",  # a kernels.attention impl: auto | pallas | xla | reference | ...
        trainable="all",  # a train.model_factory.TRAINABLE name
        tiny=tiny,
    ))


def _sft_optim(**overrides) -> dict:
    """The knobs of the one supervised phase's optimizer (train/sft.py: Adam, cosine to 5% of lr)."""
    d = dict(
        steps=0,  # 0 = no supervised phase
        lr=2e-3,
        warmup_ratio=0.05,
        b2=0.98,  # Adam b2: 0.999 adapts too slowly for a few hundred steps on a tiny model
        grad_clip=1.0,  # global-norm clip (0 = off)
        seed=0,  # batch order
        log_every=50,
    )
    d.update(overrides)
    return d


def sft_block(**overrides) -> CD:
    """Supervised phase on (user, assistant) text demonstrations (RL warm starts, tiny judges/frozen models)."""
    return _block(dict(
        **_sft_optim(lr=3e-3),
        batch_size=32,  # global, in demonstrations
        max_length=48,  # tokens per demonstration (prompt + response)
        num_examples=0,  # demonstrations to use (synthetic tasks); 0 = the whole SFT split
        label_noise=0.0,  # fraction of synthetic demonstrations with a wrong answer (imperfect SFT data)
    ), overrides)


# ------------------------------------------------------------------------------ MM-RLHF (pairs, RM, MM-DPO)


def pair_data_block(**overrides) -> CD:
    """MM-RLHF pair files (train/pair_data.py)."""
    return _block(dict(
        train="",  # dpo_pairs.jsonl for training ("" + synthetic=True: generate into the workdir)
        heldout="",  # dpo_pairs.jsonl for held-out evaluation
        heldout_queries="",  # data.jsonl of held-out queries (generation evals)
        media_root="",  # folder media paths are relative to ("" = each jsonl's folder)
        tokenizer="",  # local tokenizer folder ("" = model.init_from, or the tiny tokenizer)
        synthetic=True,  # the bundled synthetic MM-RLHF-format data (data/synthetic/mmrlhf.py)
        synthetic_train=256,  # queries
        synthetic_heldout=64,
        synthetic_seed=0,
        synthetic_hard_negatives=False,  # train queries get a 5th response: the terse wrong answer
        # teacher critique wording (data/synthetic/mmrlhf_texts.CRITIQUE_STYLES; "raw": verdict-only reasons, the
        # paper's "w/o enhanced annotation" ablation)
        synthetic_critiques="answer_first",
        max_length=128,  # tokens per sequence (prompt + media tokens + response)
        max_patches=3,  # P: tiles per image incl. the base tile (0 = the processor's maximum)
        video=True,
        num_frames=4,  # frames sampled per video (MM-RLHF: 10)
        batch_size=16,  # global, in pairs
        eval_batch_size=16,  # global, in pairs (reference precompute, evals, scoring)
        num_workers=0,  # grain worker processes
        seed=0,  # shuffle seed
        # Packed pairs (data/packing.py): rows of pack_length tokens holding up to pairs_per_row pairs, each
        # pair's prompt once and chosen / rejected as two branches after it, media tiles bucketed per row.
        # Same losses as the [B, 2, T] layout, with the prompt (and its image tokens) computed once per pair.
        packing=False,
        pack_length=0,  # tokens per row (0 = 2 * max_length: any pair of two max_length sequences fits)
        pairs_per_row=8,  # pair slots per row
        pack_rows=8,  # global rows per batch when packing (train steps, reference precompute, evals)
        pack_window=0,  # pairs read per packing round (0 = 4 * pairs_per_row * rows per process)
        pack_tiles=0,  # media tiles a row holds (0 = pairs_per_row * the most tiles one image or video has)
    ), overrides)


def pair_warm_start_block(**overrides) -> CD:
    """Supervised warm start on the best-ranked responses of the train pairs (tiny presets)."""
    return _block(dict(
        **_sft_optim(),
        batch_size=0,  # global, in responses; 0 = data.batch_size
        top_k=1,  # fit the responses ranked in the top k of their query (1 = the best; ties share a rank)
        max_length=0,  # tokens per answer sequence; 0 = data.max_length
    ), overrides)


def pair_eval_block(**overrides) -> CD:
    return _block(dict(
        generation=True,  # greedy answers on held-out queries (needs data.heldout_queries or synthetic data)
        num_queries=64,
        max_new_tokens=16,
        answer_checker="synthetic",  # an evals.generation.ANSWER_CHECKERS name
    ), overrides)


def dpo_block(**overrides) -> CD:
    return _block(dict(
        loss_type="sigmoid",  # sigmoid | ipo | hinge | robust
        beta=0.1,  # beta_ori (paper §5.1 and code)
        # paper (per-pair, from the RM margin delta) | ls_factor (per-pair, the release's field) | released
        # (batch-level implicit) | constant; a mode whose per-pair field is missing is an error (mm_dpo/beta.py)
        beta_mode="paper",
        w=0.5,  # weight of the dynamic part (paper default 0.5; released script's ls_factor_weight 0.1)
        k=0.5,  # sensitivity to the reward margin delta (paper default 0.5)
        alpha=1.0,  # weight of the preference term (code: dpo_alpha)
        gamma=0.25,  # SFT anchor weight (code: --gamma 0.25; paper grid {0, .1, .25, .5, 1})
        # SFT anchor normalisation: tokens (token mean over the batch's chosen answers) | sequences (mean of
        # per-answer token means: the release, per-device batch 1); the paper does not say (mm_dpo/step.py)
        sft_norm="tokens",
        label_smoothing=0.0,
        reference_cache_dir="",  # "" = <workdir>/reference_cache
    ), overrides)


def reward_model_block(**overrides) -> CD:
    """The critique reward model's loss and inference (algorithms/reward_model)."""
    return _block(dict(
        mode="critique",  # critique (paper) | scalar (ablation "w/o Task 1")
        score_weight=1.0,  # float_rewards_weight in the released code
        tie_weight=1.0,  # weight of (r_c - r_r)^2 on tie pairs (undefined in the release; our choice)
        center_weight=0.01,  # center_rewards_coefficient (released code; not in the paper)
        critique_weight=1.0,  # critic_rewards_weight (paper: L_Critique + L_Score, 1:1); scalar mode: unused
        head_dropout=0.0,  # RewardHead dropout (the release uses attention_dropout = 0 for Qwen2)
        # Where the RewardHead starts: auto = model.init_from's head when it has one (MM-RLHF-Reward-7B's rm_head,
        # or an exported reward_head.safetensors), else fresh; fresh; checkpoint (an error if init_from has none).
        head_init="auto",
        max_critique_tokens=64,  # greedy critique length at inference (release: 4096)
    ), overrides)


def score_block(**overrides) -> CD:
    return _block(dict(
        input="",  # dpo_pairs.jsonl to score after training ("" = no scoring)
        output="",  # default: <input>_scored.jsonl
        media_root="",  # default: data.media_root, else the input file's folder
        # Global batches (of data.eval_batch_size pairs) per part file <output>.parts/part-*.jsonl: a rerun
        # resumes after the last finished part.
        part_batches=8,
    ), overrides)


# -------------------------------------------------------------------------- RL (PPO, GRPO, Align-Pro)


def prompt_data_block(**overrides) -> CD:
    """RL prompt pools (data/prompts_pool.py) or the synthetic reasoning tasks."""
    return _block(dict(
        pool="",  # training prompts (prompt-pool jsonl with ground_truth / unit_tests / reference)
        new_pool="",  # newly collected prompts Pre-PPO selects from ("" = no selection)
        heldout="",  # held-out prompts for evals
        tokenizer="",  # "" = model.init_from, or the synthetic tasks' tokenizer
        synthetic=True,  # data/synthetic/reasoning.py
        synthetic_seed=0,
        synthetic_mix=(0.6, 0.4, 0.0),  # shares of (math, code, general) prompts
        synthetic_math_tasks=("largest", "smallest"),  # of data.synthetic.reasoning.MATH_TASKS
        synthetic_sft=1024,  # warm-start demonstrations
        synthetic_train=256,  # original pool
        synthetic_new=256,  # new pool (Pre-PPO); 0 = none
        synthetic_heldout=128,
        # Share of the "general" prompts written without their ground truth, as domain "open" (an
        # open-ended prompt: no verifier, no GenRM reference; a GenRM best-of-N reference or the learned RM
        # scores it). 0 = none.
        synthetic_open=0.0,
        seed=0,  # prompt-iterator seed
    ), overrides)


def ppo_block(**overrides) -> CD:
    """PPO-family RL. `advantage` selects a whole algorithm; the knobs marked "preset" stay None (typed
    placeholders, settable from the command line) and take that algorithm's value unless set:

        knob               gae (PPO)   grpo (GRPO)   rloo (RLOO)
        whiten_advantages  True        False         False
        kl_mode            reward      loss          reward
        kl_estimator       k1          k3            k1
        policy_loss        ppo         ppo           rloo
        loss_aggregation   token       sequence      sequence
        scale_rewards      -           group         -

    (the table, its sources and the checks live in algorithms/ppo/objectives.py).
    """
    return _block(dict(
        prompts_per_step=16,  # prompts per rollout batch (global)
        samples_per_prompt=4,  # responses per prompt; the group size of grpo / rloo
        max_prompt_length=64,  # prompt tokens (left-padded); a longer prompt is an error naming its record
        max_new_tokens=16,  # also the constant of loss_aggregation=constant (Dr. GRPO)
        sampling="temperature",  # a rollout.strategies name; top_k / top_p truncation is not in the PPO ratio
        temperature=1.0,  # also divides the logits of every training log-prob (as TRL)
        top_k=0,
        top_p=1.0,
        # rows decoding at once in a rollout (continuous batching: a stopped row's slot takes the next waiting
        # row; same samples); 0 = all prompts_per_step x samples_per_prompt rows in lockstep
        rollout_slots=0,
        epochs=2,  # PPO epochs over each rollout batch
        num_minibatches=2,  # per epoch; rollout rows must split evenly
        advantage="gae",  # gae (PPO, critic) | grpo | rloo: the algorithm (algorithms/ppo/objectives.ALGORITHMS)
        gamma=1.0,
        lam=0.95,
        # preset: masked whitening over all response tokens of the rollout batch
        whiten_advantages=config_dict.placeholder(bool),
        # preset: grpo's std: group (per prompt, the paper) | batch (the whole rollout batch) | none (Dr. GRPO)
        scale_rewards=config_dict.placeholder(str),
        # preset: ppo (token-ratio clip) | rloo (sequence-ratio clip, TRL RLOO) | reinforce (RLOO paper,
        # on-policy: epochs = num_minibatches = 1) (losses.ppo.POLICY_LOSSES)
        policy_loss=config_dict.placeholder(str),
        # preset: token (/ response tokens: TRL dapo, bnpo) | sequence (mean of per-sequence means: TRL grpo)
        # | constant (/ sequences x max_new_tokens: TRL dr_grpo) (losses.ppo.LOSS_AGGREGATIONS)
        loss_aggregation=config_dict.placeholder(str),
        clip_eps=0.2,
        clip_eps_high=0.0,  # 0 = clip_eps (symmetric); > clip_eps = DAPO-style clip-higher
        value_clip=0.2,  # 0 = unclipped value loss (critic only: gae)
        vf_coef=1.0,  # the critic has its own optimizer; this scales its loss
        entropy_coef=0.0,  # times the token-mean entropy, whatever loss_aggregation (as TRL)
        # preset: reward (k-estimate in the token reward; summed over the sequence by grpo / rloo) | loss (added
        # per token to the policy loss, aggregated with it) | none
        kl_mode=config_dict.placeholder(str),
        kl_coef=0.05,  # PPO's KL coefficient, GRPO's beta (DeepSeekMath: 0.04; TRL: 0), RLOO's beta (TRL: 0.05)
        kl_estimator=config_dict.placeholder(str),  # preset: k1 | k2 | k3 (losses.kl)
        missing_stop_penalty=0.0,  # subtracted from the score of a response that hit max_new_tokens
        eval_batch_size=64,  # held-out prompts per generation call
        log_samples=4,  # (prompt, response, reward) rows written to samples.jsonl per logged cycle
    ), overrides)


def critic_block(**overrides) -> CD:
    """The critic's trunk always starts as a copy of the initial actor, with a fresh value head."""
    return _block(dict(train_trunk=True), overrides)  # False: only the value head trains


def learned_rm_block(**overrides) -> CD:
    """The learned reward model as a reward source (algorithms/reward_model/scorer.py): the router's last resort."""
    return _block(dict(
        enabled=False,
        # A reward_model workdir (its config.json + checkpoints/: critique or scalar RM, any trunk including an
        # HF/llava init_from), or a transformers folder with a reward head (export.py's reward_head.safetensors,
        # or rm_head.* of MM-RLHF-Reward-7B); "" + enabled: a tiny scalar RM trained in <workdir>/learned_rm on
        # synthetic right-vs-wrong answers (tiny presets).
        init_from="",
        max_length=0,  # a transformers folder: tokens per critic-prompt sequence (0 = the reward_model default)
        batch_size=16,  # response pairs per RM forward / critique generation call (global)
        max_critique_tokens=0,  # critique RMs: greedy critique length (0 = the RM run's reward.max_critique_tokens)
        # Tiny RM only: its training (max_length: tokens per critic-prompt sequence; label_noise: share of
        # pairs with chosen / rejected swapped).
        warm_start=sft_block(steps=0, batch_size=32, lr=1e-3, max_length=128),
    ), overrides)


def router_block(**overrides) -> CD:
    """The hybrid reward router (rewards/router.py); the config key is `reward`."""
    return _block(dict(
        # Source order (rewards/router.REWARD_SOURCES), the paper's hacking-resistance ranking; a prompt none
        # of them applies to falls through to learned_rm when it is enabled (appended when not listed).
        order="verifier,genrm_ground_truth,genrm_reference,genrm_best_of_n",
        verifiers={"math": "math", "code": "code"},  # domain -> rewards.verifiers.VERIFIERS name
        transforms={},  # source -> (scale, shift); identity keeps RTV and GenRM on [0, 1]
        num_workers=2,  # verifier threads (sandbox runs are child processes)
        learned_rm=learned_rm_block(),
    ), overrides)


def best_of_n_block(**overrides) -> CD:
    """GenRM references for prompts with neither ground_truth nor reference (rewards/references.py)."""
    return _block(dict(
        enabled=False,
        num_candidates=4,  # N samples per prompt; the learned RM picks the best (paper: the SFT best-of-N by BT)
        generator="policy",  # "policy": the initial (SFT) policy; else a local checkpoint folder of a reference model
        tokenizer="",  # a generator checkpoint's tokenizer ("" = its folder)
        temperature=1.0,  # candidate sampling temperature
        max_new_tokens=0,  # 0 = ppo.max_new_tokens
        domains=(),  # domains whose reference-less prompts get a reference (empty = all); others fall through
        seed=0,  # candidate sampling seed (part of the cache key)
    ), overrides)


def genrm_block(**overrides) -> CD:
    return _block(dict(
        enabled=False,
        init_from="",  # local judge checkpoint ("" + enabled: a tiny judge trained on synthetic verdicts)
        tokenizer="",  # "" = init_from's (or the synthetic tasks' for the tiny judge)
        template="default",  # rewards.genrm.JUDGE_TEMPLATES
        max_new_tokens=32,
        max_prompt_length=1024,
        batch_size=16,
        failure_value=0.0,  # reward of an unparsable verdict (logged as reward/invalid_fraction)
        warm_start=sft_block(),  # tiny judge only
        best_of_n=best_of_n_block(),
    ), overrides)


def pre_ppo_block(**overrides) -> CD:
    return _block(dict(
        enabled=True,
        num_samples=4,  # policy samples scored per new prompt
        fraction=0.1,  # share of the new pool kept (paper Fig. 8: 10% beats 20% and 50%)
        normalization="zscore",  # rewards.prompt_selection.NORMALIZERS: zscore | rank | none (per domain)
        # What scores the samples (algorithms/ppo/rewards.PRE_PPO_SCORERS): router (PPO's own reward: 0/1
        # where a verifier applies) | learned_rm (the learned RM on every prompt; the paper's "RM scores") |
        # genrm (GenRM against ground truth, reference or best-of-N reference).
        scorer="router",
        # rewards.prompt_selection.SELECTIONS: per_domain (the lowest `fraction` of each domain, the paper's
        # reading) | global (the lowest `fraction` of all per-domain-normalised scores).
        selection="per_domain",
    ), overrides)


def curriculum_block(**overrides) -> CD:
    return _block(dict(
        enabled=True,
        emphasized=("math", "code"),
        at=(0.0, 0.3, 0.6),  # schedule points as fractions of train.steps
        shares=(0.8, 0.8, -1.0),  # emphasised share of each batch there (< 0: the pool's natural share)
    ), overrides)


def rl_eval_block(**overrides) -> CD:
    return _block(dict(num_prompts=0), overrides)  # held-out prompts evaluated (0 = all)


PAPER_PROMPTER_TEMPLATE = (
    "Rewrite the following request so that an assistant answers it as helpfully, correctly and safely as "
    "possible. Keep its meaning; output only the rewritten request.\n\nRequest: {prompt}")


def prompter_data_block(**overrides) -> CD:
    """Align-Pro prompt pools or the synthetic math prompts in a paraphrased phrasing."""
    return _block(dict(
        pool="",  # training prompts (prompt-pool jsonl with ground_truth / unit_tests / reference)
        heldout="",
        tokenizer="",  # the prompter's ("" = model.init_from, or the synthetic tasks' tokenizer)
        synthetic=True,
        synthetic_seed=0,
        synthetic_math_tasks=("largest", "smallest"),
        synthetic_sft=896,  # prompts of the tiny frozen model's (canonical) and the prompter's (rewrite) demos
        synthetic_train=256,
        synthetic_heldout=128,
        # Prompter demos: canonical rewrite / unchanged copy / harmful rewrite (the rest). Copy is the
        # most common, so the greedy warm-started prompter mostly copies (reward = the no-prompter
        # baseline) and RL has to find the canonical rewrite among its samples.
        rewrite_p_canonical=0.25,
        rewrite_p_copy=0.6,
        seed=0,  # prompt-iterator seed
    ), overrides)


def align_pro_block(**overrides) -> CD:
    return _block(dict(
        prompter_template=PAPER_PROMPTER_TEMPLATE,  # the prompter's user turn; {prompt} = the user prompt x
        frozen_template="{prompt}",  # the frozen model's user turn; {prompt} = the rewrite x'
        overflow_reward=0.0,  # reward of a rewrite longer than frozen.max_prompt_length
    ), overrides)


def frozen_block(**overrides) -> CD:
    return _block(dict(
        init_from="",  # local checkpoint of the frozen model ("" = the tiny one trained on canonical prompts)
        tokenizer="",  # "" = init_from's
        max_prompt_length=48,
        max_new_tokens=8,
        sampling="greedy",  # greedy: R(x, x') is the reward of the frozen model's mode; temperature: a sample
        temperature=1.0,
        batch_size=64,
        warm_start=sft_block(steps=300, batch_size=32, lr=3e-3, max_length=40),  # tiny frozen model only
    ), overrides)


# ---------------------------------------------------------------------------------------------- LongPO


def longpo_block(**overrides) -> CD:
    return _block(dict(
        value_set="paper",  # paper | released: which configs/longpo.py VALUE_SETS entry the preset applied
        beta=0.1,
        lam=0.01,  # weight of the preference term (Eq. 14)
        nll_weight=1.0,  # weight of the chosen NLL: 1 in the paper (Eq. 14); 0 = its "w/o NLL" ablation
        # whose answers the NLL term fits: chosen (LongPO) | rejected (needs nll_tokens=responses); with lam=0
        # these are the paper's SFT-Chosen / SFT-Rejected baselines
        nll_side="chosen",
        # whose log-probs the preference term compares against: short = pi_S on the short contexts (LongPO) |
        # long = pi_S on the long input itself (the paper's DPO baseline, i.e. DPO + NLL)
        reference="short",
        nll_tokens="sequence",  # sequence: NLL over the whole chosen sequence S_L | responses: chosen answers only
        max_response_tokens=0,  # > 0 (required by nll_tokens=responses): static size of the response gather
        rounds=1,  # iterative self-evolution: round r+1's generator and reference are round r's policy
        policy_rope_theta=(1e7,),  # per round (the reference keeps the previous model's); 0 = keep the base theta
        # Per-round schedule of iterative rounds (paper §4.1: 128K -> 256K -> 512K data, 45K / 16K / 2.5K
        # samples), one entry per round; empty = every round as configured (algorithms/longpo/run.round_config).
        round_max_doc_tokens=(),  # generation.max_doc_tokens; data.max_length keeps its headroom over it and
        #                           generation.min_doc_tokens its ratio; synthetic: passages scaled alike
        round_steps=(),  # train.steps
        round_documents=(),  # data.documents ("" = data.documents)
        attention_impl="context_parallel_zigzag",  # the policy's attention in training (kernels README)
        reference_batch_size=8,  # samples per reference log-prob forward (global)
    ), overrides)


def longpo_data_block(**overrides) -> CD:
    return _block(dict(
        documents="",  # jsonl of {"id", "text"} long documents ("" + synthetic: the tiny task's documents)
        eval_records="",  # jsonl of task eval records (long/short accuracy); "" = none (synthetic: generated)
        tokenizer="",  # "" = model.init_from (or the synthetic task's tokenizer)
        synthetic=False,  # data/synthetic/longdoc.py
        synthetic_train_docs=96,
        synthetic_eval_docs=64,
        synthetic_passages_per_doc=16,
        synthetic_min_filler=2,
        synthetic_max_filler=4,
        synthetic_seed=0,
        heldout_fraction=0.1,  # generated samples kept out of training for held-out preference accuracy
        max_length=139264,  # packed prompt + chosen turns + rejected turns (a multiple of 2 x sequence axis)
        max_short_length=36864,  # one short reference conversation (chunk + question + answer)
        batch_size=8,  # global, in samples
        eval_batch_size=8,
        num_workers=0,
        seed=0,
    ), overrides)


def longpo_generation_block(**overrides) -> CD:
    """Self-generated short-to-long pairs (data/longpo/generate.py; filter defaults as data/longpo/filters.py)."""
    return _block(dict(
        max_chunk_tokens=30000,  # released grouping max_tokens (paper: <= 32K)
        min_chunk_tokens=16384,
        max_chunks_per_doc=4,
        turns_per_doc=4,
        min_turns=1,
        min_doc_tokens=65536,
        max_doc_tokens=122880,  # leaves room for the turns inside data.max_length
        query_prompt="released",  # an algorithms.longpo.data.QUERY_PROMPTS name
        numbered_questions=True,
        num_questions=4,
        question_strategy="top_p",  # instructions: T 0.7, top-p 0.9 (paper and code)
        question_temperature=0.7,
        question_top_p=0.9,
        answer_strategy="greedy",  # greedy (paper) | top_p (released: T 1.0, p 1.0)
        answer_temperature=1.0,
        answer_top_p=1.0,
        max_question_tokens=1024,
        max_answer_tokens=1024,
        batch_size=8,  # conversations per generation call (global)
        seed=0,
        min_answer_chars=10,  # released: len(answer) > 10
        repetition_threshold=3,  # KMP periodicity and back-to-back n-gram repeats (released threshold)
        drop_truncated=True,  # answers that hit max_answer_tokens without a stop token
        keep_refused_rejected=False,  # False (released): a refused y_L drops the turn
    ), overrides)


def longpo_warm_start_block(**overrides) -> CD:
    """SFT of the tiny model on the synthetic task's short-context examples (LongPO assumes an aligned pi_S)."""
    return _block(dict(
        **_sft_optim(lr=3e-3, warmup_ratio=50 / 600, b2=0.999),
        batch_size=32,
        num_examples=8000,
        max_length=160,
        min_passages=2,
        max_passages=3,
    ), overrides)


def longpo_eval_block(**overrides) -> CD:
    return _block(dict(
        num_records=64,  # task eval records (long- and short-context accuracy)
        max_new_tokens=16,
        batch_size=32,
        short_context_margin=0.05,  # allowed short-context accuracy drop, reported as short_context_ok
    ), overrides)


# --------------------------------------------------------------------------------------------- schemas


def _base(algorithm: str) -> CD:
    c = CD()
    c.algorithm = algorithm  # the main.ALGORITHMS entry that runs this config
    c.seed = 0  # model init and training randomness
    c.mesh = mesh_block()
    c.model = model_block()
    c.optim = optim_block()
    c.train = train_block()
    return c


def _reward_model() -> CD:
    c = _base("reward_model")
    c.data = pair_data_block(max_length=192)  # critic prompt + image tokens + answer + critique
    c.warm_start = pair_warm_start_block(max_length=128)  # the answers alone (policy prompt, not critic prompt)
    c.reward = reward_model_block()
    c.score = score_block()
    return c


def _mm_dpo() -> CD:
    c = _base("mm_dpo")
    c.data = pair_data_block()
    c.warm_start = pair_warm_start_block()
    c.dpo = dpo_block()
    c.eval = pair_eval_block()
    return c


def _rl(algorithm: str) -> CD:
    c = _base(algorithm)
    c.model = model_block(multimodal=False)
    c.ppo = ppo_block()
    c.critic = critic_block()
    c.critic_optim = optim_block()
    c.reward = router_block()
    c.genrm = genrm_block()
    c.eval = rl_eval_block()
    return c


def _ppo() -> CD:
    c = _rl("ppo")
    c.data = prompt_data_block()
    c.warm_start = sft_block()
    c.pre_ppo = pre_ppo_block()
    c.curriculum = curriculum_block()
    return c


def _align_pro() -> CD:
    c = _rl("align_pro")  # c.model is the prompter rho
    c.data = prompter_data_block()
    c.warm_start = sft_block(steps=150, batch_size=32, lr=3e-3, max_length=56)  # tiny prompter only
    c.align_pro = align_pro_block()
    c.frozen = frozen_block()
    return c


def _longpo() -> CD:
    c = _base("longpo")
    c.model = model_block(multimodal=False)
    c.mesh = mesh_block(fsdp=-1, sequence=8)
    c.optim = optim_block(name="adam", lr=5e-7, schedule="cosine", warmup_ratio=0.1, weight_decay=0.0)
    c.longpo = longpo_block()
    c.data = longpo_data_block()
    c.generation = longpo_generation_block()
    c.warm_start = longpo_warm_start_block()
    c.eval = longpo_eval_block()
    return c


SCHEMAS: dict[str, Callable[[], CD]] = {
    "reward_model": _reward_model, "mm_dpo": _mm_dpo, "ppo": _ppo, "align_pro": _align_pro, "longpo": _longpo}


def schema(algorithm: str) -> CD:
    """The full default config of `algorithm` (every key a preset may set)."""
    if algorithm not in SCHEMAS:
        raise KeyError(f"unknown algorithm {algorithm!r}; known: {sorted(SCHEMAS)}")
    return SCHEMAS[algorithm]()


def preset(algorithm: str, arg: str = "tiny", *, configs_dir: str | None = None) -> CD:
    """configs/<algorithm>.py:get_config(arg), the preset the command line would load (notebooks, tests).

    configs_dir defaults to the repository's configs/ folder next to this package.
    """
    import importlib.util
    import os

    folder = configs_dir or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    path = os.path.join(folder, f"{algorithm}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config file {path} (pass configs_dir= for configs outside the repository)")
    spec = importlib.util.spec_from_file_location(f"configs_{algorithm}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def override(c: CD, values: dict) -> CD:
    """A copy of config c with dotted keys set ({"train.microbatches": 1, ...}); unknown keys are errors."""
    out = c.copy_and_resolve_references()
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"config has no key {path!r}")
        node[leaf] = value
    return out


def from_saved(saved: dict) -> CD:
    """The config a run saved as <workdir>/config.json, on its algorithm's schema (export, inspection).

    Keys the schema lacks are errors naming the key; keys the saved file lacks (a run older than a
    new knob) keep the schema's default. JSON lists become tuples where the schema holds a tuple.
    """
    if "algorithm" not in saved:
        raise ValueError("saved config has no 'algorithm' key; is this a run's config.json?")
    out = schema(saved["algorithm"])

    def fill(node: CD, values: dict, prefix: str) -> None:
        for key, value in values.items():
            if key not in node:
                raise ValueError(f"saved config key {prefix}{key} is not in the {saved['algorithm']} schema")
            if isinstance(node[key], CD):
                fill(node[key], value, f"{prefix}{key}.")
            else:
                with node.ignore_type():  # placeholders and dict-valued knobs keep their saved value
                    node[key] = tuple(value) if isinstance(node[key], tuple) and isinstance(value, list) else value

    fill(out, saved, "")
    return out
