"""Per-token KL estimators between the policy and a reference (Schulman's k1/k2/k3).

With x ~ pi and log-ratio d = log pi(x) - log ref(x):
  k1 = d                      unbiased, high variance, can be negative
  k2 = d^2 / 2                biased, low variance (its gradient is the KL's gradient)
  k3 = exp(-d) - 1 + d        unbiased, non-negative, low variance
All in f32; inputs f32[...].
"""

import jax.numpy as jnp

from mm_rlhf_jax.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")
KL_ESTIMATORS.register("k1")(lambda d: d)
KL_ESTIMATORS.register("k2")(lambda d: 0.5 * d * d)
KL_ESTIMATORS.register("k3")(lambda d: jnp.expm1(-d) + d)


def kl_estimate(logp, ref_logp, estimator: str = "k3"):
    d = jnp.asarray(logp, jnp.float32) - jnp.asarray(ref_logp, jnp.float32)
    return KL_ESTIMATORS.get(estimator)(d)
