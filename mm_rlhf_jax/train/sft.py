"""Short supervised warm start (SFT) on (user, assistant) text demonstrations.

PPO and Align-Pro start from an SFT policy; the tiny presets build one here
from the bundled synthetic demonstrations (a random-init model cannot sample
a single correct answer, so RL alone would have no signal). The run lives in
its own workdir folder with orbax checkpoints, so re-running resumes it and a
finished warm start is restored instead of retrained.

    params = run_sft(workdir/"warm_start", module, params, arrays, sft_cfg, mesh)

Loss: token-mean NLL over assistant tokens, log-probs from kernels.token_logprobs.
"""

import logging

import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mm_rlhf_jax.data.tokenize import encode_turns
from mm_rlhf_jax.losses.logprobs import masked_sum, shifted_token_logprobs
from mm_rlhf_jax.train import data_setup, setup, state as state_lib
from mm_rlhf_jax.train.optim import make_optimizer


def sft_block(**overrides) -> ml_collections.ConfigDict:
    d = dict(
        steps=0,  # 0 = no warm start
        batch_size=32,
        lr=3e-3,
        warmup_ratio=0.05,
        b2=0.98,  # Adam b2: 0.999 adapts too slowly for a few hundred steps on a tiny model
        max_length=48,  # tokens per demonstration (prompt + response)
        num_examples=0,  # demonstrations to generate (synthetic tasks); 0 = the whole SFT split
        label_noise=0.0,  # fraction of demonstrations with a wrong answer (imperfect SFT data)
        seed=0,
        log_every=50,
    )
    d.update(overrides)
    return ml_collections.ConfigDict(d)


def sft_arrays(tokenizer, conversations, max_length: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask int32[N, T], loss_mask f32[N, T] (right-padded) for (user, assistant) pairs."""
    n = len(conversations)
    ids = np.full((n, max_length), int(tokenizer.pad_token_id), np.int32)
    att, loss = np.zeros((n, max_length), np.int32), np.zeros((n, max_length), np.float32)
    for i, (user, assistant) in enumerate(conversations):
        seq, mask = encode_turns(tokenizer, user, assistant, max_length=max_length, media=None)
        if mask.sum() < 1:
            raise ValueError(f"demonstration {i} ({user[:60]!r}) has no response token within "
                             f"max_length={max_length}")
        ids[i, :len(seq)], att[i, :len(seq)], loss[i, :len(seq)] = seq, 1, mask
    return {"input_ids": ids, "attention_mask": att, "loss_mask": loss}


class ArrayBatches:
    """Seeded random batches of in-memory arrays; the state is the next batch index (checkpointable)."""

    def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int):
        self.arrays, self.batch_size, self.seed, self.index = arrays, batch_size, seed, 0
        self.n = len(next(iter(arrays.values())))

    def __next__(self):
        rows = np.random.default_rng([self.seed, self.index]).integers(self.n, size=self.batch_size)
        self.index += 1
        return {k: v[rows] for k, v in self.arrays.items()}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


def sft_loss(module, params, batch):
    out = module.apply({"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"],
                       compute_logits=False)
    lp = shifted_token_logprobs(out.hidden_states, module.lm_head_weight(params), batch["input_ids"])
    total, count = masked_sum(lp, batch["loss_mask"])
    n = jnp.maximum(jnp.sum(count), 1.0)
    loss = -jnp.sum(total) / n
    return loss, {"train/loss": loss, "sft/tokens": jnp.sum(count)}


def sft_train_step(state, batch, *, module, tx, mask):
    return state_lib.minimize(lambda p, b: sft_loss(module, p, b), state, batch, tx, mask)


def optimizer(c: ml_collections.ConfigDict):
    from mm_rlhf_jax.train.config_lib import optim_block

    opt = optim_block(name="adam", lr=c.lr, schedule="cosine", warmup_ratio=c.warmup_ratio, final_lr_ratio=0.05,
                      b2=c.b2)
    return make_optimizer(opt, c.steps)


def run_sft(directory: str, module, params, arrays: dict[str, np.ndarray], c: ml_collections.ConfigDict,
            mesh: Mesh, rules, *, trainable=(".*",), eval_fn=None):
    """Trains `params` for c.steps (resuming from directory/checkpoints); returns (params, final eval)."""
    data_iter = ArrayBatches(arrays, data_setup.per_host_batch(c.batch_size, mesh), c.seed)
    logging.info("SFT warm start: %d demonstrations, %d steps -> %s", data_iter.n, c.steps, directory)
    return setup.run_phase(directory, module, params, sft_train_step, data_iter, optimizer(c), trainable=trainable,
                           mesh=mesh, rules=rules, steps=c.steps, seed=c.seed, log_every=c.log_every,
                           checkpoint_every=max(c.steps // 4, 1), eval_fn=eval_fn)
