"""The config's optimizers against torch's (the released LongPO command runs torch RMSprop via HF)."""

import jax.numpy as jnp
import numpy as np
import pytest

from mm_rlhf_jax.config_lib import optim_block
from mm_rlhf_jax.train.optim import OPTIMIZERS

torch = pytest.importorskip("torch")


def _torch_updates(opt_cls, kwargs, grads, p0):
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = opt_cls([p], **kwargs)
    out = []
    for g in grads:
        opt.zero_grad()
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out


@pytest.mark.parametrize("name,torch_cls,kwargs", [
    ("rmsprop", "RMSprop", dict(alpha=0.99, eps=1e-3)),  # a large eps: inside vs outside the sqrt differs
    ("adam", "Adam", dict(betas=(0.9, 0.999), eps=1e-3)),
])
def test_optimizer_steps_equal_torch(name, torch_cls, kwargs):
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=5) * s for s in (1.0, 0.01, 3.0, 0.1)]
    p0 = rng.normal(size=5)
    lr = 0.05
    b2 = kwargs.get("alpha", kwargs.get("betas", (0, 0.999))[1])
    tx = OPTIMIZERS.get(name)(optim_block(name=name, b2=b2, eps=kwargs["eps"]), lr)
    params = jnp.asarray(p0, jnp.float32)
    state = tx.init(params)
    expected = _torch_updates(getattr(torch.optim, torch_cls), dict(lr=lr, **kwargs), grads, p0)
    for g, want in zip(grads, expected):
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
        params = params + updates
        np.testing.assert_allclose(np.asarray(params), want, rtol=1e-5, atol=1e-6)
