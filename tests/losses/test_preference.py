"""DPO family vs TRL's own DPOTrainer code; MM-DPO beta table; LongPO by hand."""

import math
import types
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.losses import preference


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory):
    """A real trl.DPOTrainer on a tiny offline Qwen2 (its loss code is what we compare against)."""
    torch = pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    import datasets
    import tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>"] + [f"w{i}" for i in range(60)])}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>",
                                  bos_token="<bos>", unk_token="<unk>")
    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    policy, ref = Qwen2ForCausalLM(cfg), Qwen2ForCausalLM(cfg)
    ds = datasets.Dataset.from_dict({"prompt": ["w1 w2"] * 4, "chosen": [" w3"] * 4, "rejected": [" w4"] * 4})
    args = trl.DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=2,
                         max_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                         gradient_checkpointing=False)
    return trl.DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)


def trl_loss(trainer, pc, pr, rc, rr, lengths, *, loss_type, beta, label_smoothing=0.0):
    """TRL's DPOTrainer._compute_loss on given sequence log-probs.

    A stand-in model returns per-token log-probs whose completion-masked sums are
    exactly pc/pr, and reference log-probs are passed as precomputed inputs, so
    the loss arithmetic under test is TRL's own code.
    """
    import torch

    n, t = len(pc), int(max(lengths)) + 2
    completion = torch.zeros(2 * n, t, dtype=torch.long)
    for i, length in enumerate(lengths):
        completion[i, 1 : 1 + int(length)] = 1
    per_token = torch.zeros(2 * n, t - 1, dtype=torch.float64)
    per_token[:, 0] = torch.tensor(np.concatenate([pc, pr]), dtype=torch.float64)

    def fake_model(**kwargs):
        z = torch.zeros(2 * n, t - 1)
        return types.SimpleNamespace(log_probs=per_token, entropy=z, mean_logits=z, is_top1=z.bool())

    trainer.beta, trainer.loss_types, trainer.loss_weights = beta, [loss_type], [1.0]
    trainer.label_smoothing, trainer.precompute_ref_logps = label_smoothing, True
    inputs = {
        "input_ids": torch.zeros(2 * n, t, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, t, dtype=torch.long),
        "completion_mask": completion,
        "ref_chosen_logps": torch.tensor(rc, dtype=torch.float64),
        "ref_rejected_logps": torch.tensor(rr, dtype=torch.float64),
    }
    return float(trainer._compute_loss(fake_model, inputs, False))


@pytest.mark.parametrize("loss_type,label_smoothing", [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0),
                                                       ("robust", 0.1), ("robust", 0.3)])
def test_dpo_loss_matches_trl(trl_trainer, loss_type, label_smoothing):
    rng = np.random.default_rng(zlib.crc32(f"{loss_type}{label_smoothing}".encode()))
    n = 6
    pc, pr, rc, rr = (rng.normal(-20, 5, n) for _ in range(4))
    chosen_len = rng.integers(3, 9, n)
    rejected_len = rng.integers(3, 9, n)
    beta = 0.3
    expected = trl_loss(trl_trainer, pc, pr, rc, rr, np.concatenate([chosen_len, rejected_len]),
                        loss_type=loss_type, beta=beta, label_smoothing=label_smoothing)
    lengths = dict(chosen_lengths=chosen_len, rejected_lengths=rejected_len) if loss_type == "ipo" else {}
    losses, chosen_rewards, rejected_rewards = preference.dpo_loss(
        pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, **lengths)
    assert float(jnp.mean(losses)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # f32 differences of ~-20-sized log-probs: compare on the log-prob scale.
    np.testing.assert_allclose(chosen_rewards, beta * (pc - rc), atol=1e-6 * np.abs(pc).max())
    np.testing.assert_allclose(rejected_rewards, beta * (pr - rr), atol=1e-6 * np.abs(pr).max())


def test_sigmoid_label_smoothing_is_cdpo():
    logits, beta, eps = 1.7, 0.5, 0.2
    losses, _, _ = preference.dpo_loss(jnp.array([logits]), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1),
                                       beta=beta, label_smoothing=eps)
    sig = lambda x: 1 / (1 + math.exp(-x))
    expected = -(1 - eps) * math.log(sig(beta * logits)) - eps * math.log(sig(-beta * logits))
    assert float(losses[0]) == pytest.approx(expected, rel=1e-6)


def test_per_pair_beta_equals_separate_scalar_calls():
    rng = np.random.default_rng(0)
    pc, pr, rc, rr = (rng.normal(size=4) for _ in range(4))
    betas = np.array([0.05, 0.1, 0.2, 0.4])
    batched, _, _ = preference.dpo_loss(pc, pr, rc, rr, beta=betas)
    for i, b in enumerate(betas):
        single, _, _ = preference.dpo_loss(pc[i:i + 1], pr[i:i + 1], rc[i:i + 1], rr[i:i + 1], beta=float(b))
        assert float(batched[i]) == pytest.approx(float(single[0]), rel=1e-6)


def test_robust_rejects_bad_label_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        preference.dpo_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta=0.1,
                            loss_type="robust", label_smoothing=0.5)


def test_unknown_loss_type_is_named():
    with pytest.raises(KeyError, match="kto_pair"):
        preference.dpo_loss(jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta=0.1, loss_type="kto_pair")


def test_dynamic_beta_table():
    # papers.md §1(a): beta_ori = 0.1, w = k = 0.5.
    table = {0: 0.100, 0.5: 0.111, 1: 0.120, 2: 0.132, 4: 0.143, 8: 0.149, 1e6: 0.150}
    got = preference.dynamic_beta(jnp.array(list(table), jnp.float32), beta=0.1, w=0.5, k=0.5)
    np.testing.assert_allclose(np.asarray(got), list(table.values()), atol=5e-4)


def test_dynamic_beta_clamps_negative_and_unknown_margins():
    got = preference.dynamic_beta(jnp.array([-3.0, jnp.nan]), beta=0.1, w=0.5, k=0.5)
    np.testing.assert_allclose(np.asarray(got), [0.1, 0.1])


def test_released_beta_is_batch_level_and_deterministic_per_key():
    logits = jnp.array([0.0, 1.0, 2.0, 3.0, 10.0])
    key = jax.random.PRNGKey(0)
    b1 = preference.released_beta(logits, beta=0.1, w=0.1, key=key)
    b2 = preference.released_beta(logits, beta=0.1, w=0.1, key=key)
    assert b1.shape == () and float(b1) == float(b2)
    # With 80% of 5 = 4 kept, the outlier (weight ~0) is the one dropped almost surely:
    # beta * (1 + w * (mean(0,1,2,3) - mean(all))) = 0.1 * (1 + 0.1 * (1.5 - 3.2)).
    assert float(b1) == pytest.approx(0.1 * (1 + 0.1 * (1.5 - 3.2)), rel=1e-5)
    assert float(preference.released_beta(logits * 100, beta=0.1, w=1.0, key=key)) == pytest.approx(1e-3)


def test_longpo_loss_by_hand():
    pc, pr, rc, rr, nll = -10.0, -12.0, -11.0, -11.5, 2.3
    beta, lam = 0.1, 0.01
    z = (pc - rc) - (pr - rr)
    expected = nll + lam * math.log1p(math.exp(-beta * z))
    got = preference.longpo_loss(jnp.array([pc]), jnp.array([pr]), jnp.array([rc]), jnp.array([rr]),
                                 jnp.array([nll]), beta=beta, lam=lam)
    assert float(got[0]) == pytest.approx(expected, rel=1e-6)


def test_longpo_without_nll_is_lam_times_dpo():
    pc, pr, rc, rr, nll = -10.0, -12.0, -11.0, -11.5, 2.3
    got = preference.longpo_loss(jnp.array([pc]), jnp.array([pr]), jnp.array([rc]), jnp.array([rr]),
                                 jnp.array([nll]), beta=0.1, lam=0.01, nll_weight=0.0)
    assert float(got[0]) == pytest.approx(0.01 * math.log1p(math.exp(-0.1 * 1.5)), rel=1e-6)


def test_longpo_with_long_reference_is_dpo_plus_nll():
    rng = np.random.default_rng(1)
    pc, pr, rc, rr, nll = (rng.normal(size=5) for _ in range(5))
    dpo, _, _ = preference.dpo_loss(pc, pr, rc, rr, beta=0.1)
    longpo = preference.longpo_loss(pc, pr, rc, rr, nll, beta=0.1, lam=0.25)
    np.testing.assert_allclose(np.asarray(longpo), nll + 0.25 * np.asarray(dpo), rtol=1e-6)
