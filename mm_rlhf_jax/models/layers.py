"""Small shared building blocks: RMSNorm, logically-partitioned initializers, remat policies, Linear."""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def init(axes: Sequence[str | None], std: float = 0.02):
    """Normal initializer that also records the parameter's logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.normal(std), tuple(axes))


def zeros(axes: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(axes))


def ones(axes: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(axes))


class RMSNorm(nn.Module):
    """RMSNorm computed in f32 (as transformers does), scaled, cast to `dtype`."""

    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", ones(("norm",)), (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (weight.astype(jnp.float32) * x32).astype(self.dtype)


# Activations tagged with jax.ad_checkpoint.checkpoint_name for the "attention" remat policy.
ATTENTION_OUT = "attention_out"


def remat_policy(name: str):
    """Named rematerialisation policies for `nn.remat`.

      full       save nothing: recompute the whole layer in the backward pass (least memory)
      dots       save matmul outputs without batch dimensions
      attention  save only each layer's attention output (the costliest recompute), recompute the rest
    """
    policies = {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
        "attention": jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT),
    }
    if name not in policies:
        raise ValueError(f"unknown remat policy {name!r}; use none, {', '.join(policies)}")
    return policies[name]


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class Linear(nn.Module):
    """y[..., *out] = x[..., *in] . kernel[*in, *out] (+ bias[*out]), params with logical axes.

    Used instead of nn.DenseGeneral for multi-dimensional kernels such as
    [embed, heads, head_dim]: DenseGeneral initialises a flattened 2-D kernel
    and reshapes it, which breaks logical sharding constraints inside a mesh.

    The product itself is one 2-D matmul x[N, prod(in)] . kernel[prod(in), prod(out)]
    (leading dims of x flattened into N, the kernel's in / out dims merged): XLA:CPU
    runs the weight gradient of a 3-D `btd,btf->df` contraction ~2x slower than the
    same contraction on [B*T, d]; the reshapes are free and the result is identical.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    std: float = 0.02

    @nn.compact
    def __call__(self, x):
        n_in = len(self.in_shape)
        kernel = self.param("kernel", init(self.kernel_axes, self.std), self.in_shape + self.out_shape,
                            self.param_dtype)
        lead = x.shape[:x.ndim - n_in]
        if x.shape[x.ndim - n_in:] != tuple(self.in_shape):
            raise ValueError(f"Linear {self.name}: input trailing dims {x.shape[x.ndim - n_in:]} != in_shape "
                             f"{tuple(self.in_shape)}")
        x2 = x.astype(self.dtype).reshape(math.prod(lead), math.prod(self.in_shape))
        k2 = kernel.astype(self.dtype).reshape(math.prod(self.in_shape), math.prod(self.out_shape))
        y = jnp.dot(x2, k2).reshape(*lead, *self.out_shape)
        if self.use_bias:
            bias = self.param("bias", zeros(self.kernel_axes[n_in:]), self.out_shape, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y
