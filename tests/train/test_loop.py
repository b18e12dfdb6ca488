"""Host loop: preemption + resume reproduces an uninterrupted run; non-finite loss is named."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mm_rlhf_jax.train import checkpoint, loop, metrics, state as state_lib


class ToyData:
    """Deterministic regression batches; the state is the next batch index."""

    def __init__(self, seed=0):
        self.index, self.seed = 0, seed

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        x = rng.normal(size=(8, 3)).astype(np.float32)
        return {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, s):
        self.index = s["index"]


TX = optax.adam(0.1)
MASK = {"w": True}


def step_fn(state, batch):
    def loss_fn(params):
        pred = batch["x"] @ params["w"]
        loss = jnp.mean((pred - batch["y"]) ** 2) * batch.get("scale", 1.0)
        return loss, {}

    (loss, _), grads = state_lib.grad_of_trainable(loss_fn, state.params, MASK)
    state, m = state_lib.apply_gradients(state, grads, TX, MASK)
    return state, {"train/loss": loss, **m}


def fresh_state():
    params = {"w": jnp.zeros(3)}
    return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=TX.init(params),
                                rng=jax.random.PRNGKey(0))


def run(workdir, total, *, preempt_at=None, poison_at=None):
    data = ToyData()
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "ckpt"), async_save=False)
    writer = metrics.MetricWriter(workdir, tensorboard=False)
    init = fresh_state()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), init)
    state = loop.restore_if_any(ckpt, abstract, data) or init

    def put(batch):
        i = data.index - 1
        if preempt_at is not None and i == preempt_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if poison_at is not None and i == poison_at:
            batch = {**batch, "scale": np.float32(np.nan)}
        return batch

    try:
        return loop.run_loop(state=state, step_fn=jax.jit(step_fn), data_iter=data, put_batch=put,
                             total_steps=total, checkpointer=ckpt, writer=writer, eval_fn=lambda s: {
                                 "w0": float(s.params["w"][0])}, log_every=1, checkpoint_every=4,
                             progress=False)
    finally:
        ckpt.close()
        writer.close()


def test_preempted_then_resumed_equals_uninterrupted(tmp_path):
    ref_state, ref_eval = run(str(tmp_path / "ref"), 12)
    with pytest.raises(loop.Preempted) as exc:
        run(str(tmp_path / "cut"), 12, preempt_at=6)
    assert exc.value.step == 7 and exc.value.code == 143
    state, ev = run(str(tmp_path / "cut"), 12)
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.asarray(ref_state.params["w"]))
    assert ev == ref_eval and int(state.step) == 12
    rows = [json.loads(l) for l in open(tmp_path / "cut" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "train/loss" in r][-1] == 11


def test_non_finite_loss_names_step_and_keeps_last_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="at step 5"):
        run(str(tmp_path), 12, poison_at=5)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"))
    assert ckpt.latest_step() == 4
    restored, _ = ckpt.restore(4, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh_state()))
    assert np.all(np.isfinite(np.asarray(restored.params["w"])))
    ckpt.close()
