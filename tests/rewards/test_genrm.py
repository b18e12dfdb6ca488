"""GenRM: score parsing (hand-labelled) and judging through the KV-cache sampler with a scripted judge.

The scripted judge is a jnp "model" behind the sampler contract: from the
prefill it reads the token after "Reference :" and the token after
"Response :" and then emits "Score : 1" when they are equal, "Score : 0" when
they differ, and "moo" (no score) when the response is a number. The expected
scores are computed here in Python from the same rule, independently of the
GenRM code (prompt templating, tokenisation, left-padding, sampling, decoding,
parsing).
"""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.data.tokenizer import load_tokenizer
from mm_rlhf_jax.data.synthetic import reasoning as tasks
from mm_rlhf_jax.rewards.genrm import JUDGE_TEMPLATES, GenRM, GenRMConfig, parse_score
from mm_rlhf_jax.sharding import make_mesh


class ScriptedModule:
    """The module contract rollout.generate needs (apply with a cache, init_cache) around a scripted judge."""

    def __init__(self, apply_fn, init_cache):
        self._apply, self._init = apply_fn, init_cache

    def apply(self, variables, ids, *, compute_logits=True, **kw):
        return self._apply(variables["params"], ids, **kw)

    def init_cache(self, batch, max_len, dtype=None):
        return self._init(batch, max_len)


def scripted_genrm(tok, cfg):
    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    return GenRM.build(ScriptedModule(*scripted_judge(tok)), {}, tok, mesh, cfg)

PARSE_CASES = [
    ("Score: 0.8", 0.8), ("score = 1", 1.0), ("The response is wrong. Score: 0", 0.0),
    ("Score : 0 . 5", 0.5),  # word-level detokenisation
    ("Score: 7/10", 0.7), ("Score: 80%", 0.8), ("0.25", 0.25), ("1", 1.0), ("0.5.", 0.5),
    ("first Score: 0.2 then Score: 0.9", 0.9),  # the last verdict wins
    ("Score: 1.5", None), ("Score: 11/10", None), ("Score: 3/0", None), ("no verdict", None), ("", None),
    ("The answer is 7", None), ("Score: banana", None), ("2", None),
]


@pytest.mark.parametrize("text,expected", PARSE_CASES)
def test_parse_score(text, expected):
    got = parse_score(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_tokenizer(tasks.build_tokenizer(str(tmp_path_factory.mktemp("reasoning_tok"))))


@flax.struct.dataclass
class _Out:
    logits: jax.Array
    cache: dict


def scripted_judge(tok):
    """(apply_fn, init_cache) of the scripted judge (see module docstring)."""
    v = len(tok)
    tid = lambda w: tok.convert_tokens_to_ids(w)
    ref_id, resp_id = tid("Reference"), tid("Response")
    number_ids = jnp.array([tid(str(k)) for k in range(20)])
    yes = jnp.array([tid("Score"), tid(":"), tid("1"), tok.eos_token_id])
    no = jnp.array([tid("Score"), tid(":"), tid("0"), tok.eos_token_id])
    bad = jnp.array([tid("moo"), tok.eos_token_id, tok.eos_token_id, tok.eos_token_id])

    def init_cache(b, max_len):
        return {"step": jnp.zeros((), jnp.int32), "verdict": jnp.zeros((b,), jnp.int32)}

    def apply_fn(params, ids, *, positions, segment_ids, cache, **kw):
        del params, positions, segment_ids, kw
        if ids.shape[1] > 1:  # prefill: decide the verdict
            after = lambda marker: jnp.take_along_axis(ids, jnp.argmax(ids == marker, axis=1)[:, None] + 2, 1)[:, 0]
            ref, resp = after(ref_id), after(resp_id)
            verdict = jnp.where(jnp.isin(resp, number_ids), 2, jnp.where(ref == resp, 0, 1)).astype(jnp.int32)
            cache = {"step": jnp.zeros((), jnp.int32), "verdict": verdict}
        script = jnp.stack([yes, no, bad])[cache["verdict"]]  # [B, 4]
        token = script[:, jnp.minimum(cache["step"], 3)]
        logits = jax.nn.one_hot(token, v)[:, None, :] * 10.0
        logits = jnp.broadcast_to(logits, (ids.shape[0], ids.shape[1], v))
        return _Out(logits=logits, cache={"step": cache["step"] + 1, "verdict": cache["verdict"]})

    return apply_fn, init_cache


def test_genrm_scores_through_the_sampler(tok):
    cfg = GenRMConfig(template="tiny", max_new_tokens=6, max_prompt_length=64, batch_size=4, failure_value=-1.0)
    genrm = scripted_genrm(tok, cfg)
    cases = [("cow", "moo", "moo"), ("dog", "woof", "meow"), ("cat", "meow", "meow"), ("owl", "hoot", "7"),
             ("bee", "buzz", "hiss"), ("duck", "quack", "quack")]  # 6 rows: one full batch and a padded one
    prompts = [tasks.GENERAL_TEMPLATE.format(thing=t) for t, _, _ in cases]
    out = genrm.score(prompts, [y for _, _, y in cases], [r for _, r, _ in cases])
    expected = [-1.0 if y.isdigit() else float(r == y) for _, r, y in cases]
    np.testing.assert_array_equal(out.scores, np.array(expected, np.float32))
    np.testing.assert_array_equal(out.valid, [not y.isdigit() for _, _, y in cases])
    assert out.outputs[0] == "Score : 1" and out.outputs[1] == "Score : 0" and out.outputs[3] == "moo"


def test_genrm_judge_prompt_and_too_long_prompt(tok):
    genrm = scripted_genrm(tok, GenRMConfig(template="tiny", max_new_tokens=4, max_prompt_length=40, batch_size=2))
    text = genrm.judge_texts(["What sound does a cow make ?"], ["moo"], ["moo"])[0]
    assert text == JUDGE_TEMPLATES.get("tiny").format(prompt="What sound does a cow make ?", reference="moo",
                                                      response="moo")
    long_response = " ".join(["moo"] * 40)
    out = genrm.score(["What sound does a cow make ?"] * 2, ["moo", long_response], ["moo", "moo"])
    assert out.scores.tolist() == [1.0, 0.0]  # failure_value defaults to 0.0
    assert out.valid.tolist() == [True, False]
    assert out.outputs[1] == "<judge prompt too long>"
    with pytest.raises(ValueError, match="same length"):
        genrm.score(["a"], ["b", "c"], ["d"])
