"""rollout.generate_tokens (DESIGN §3) == transformers' greedy generate on the same checkpoint (f32)."""

import jax.numpy as jnp
import numpy as np
import torch

from mm_rlhf_jax.models import hf
from mm_rlhf_jax.rollout import generate_tokens


def test_greedy_tokens_equal_transformers_generate(checkpoints):
    ck = checkpoints("qwen2")
    model, params = hf.load_pretrained(ck.path, jnp.float32)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 500, size=n).tolist() for n in (5, 9, 12)]
    ours = generate_tokens(model, params, prompts, max_new_tokens=8)
    for prompt, got in zip(prompts, ours):
        with torch.no_grad():
            ref = ck.torch_model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                          eos_token_id=None, pad_token_id=0)
        assert got == ref[0, len(prompt):].tolist()
    # num_samples repeats each prompt; a stop id ends a row after it.
    twice = generate_tokens(model, params, prompts[:1], max_new_tokens=8, num_samples=2)
    assert twice == [ours[0], ours[0]]
    stop = ours[0][3]
    cut = generate_tokens(model, params, prompts[:1], max_new_tokens=8, stop_ids=[stop])[0]
    assert cut == ours[0][:ours[0].index(stop) + 1]
