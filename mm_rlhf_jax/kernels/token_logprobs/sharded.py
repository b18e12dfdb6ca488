"""The Pallas TPU token log-probs over a device mesh: token-parallel and vocab-parallel.

A `pallas_call` is opaque to XLA's SPMD partitioner, so under a multi-device mesh
(`jax.set_mesh`) the kernels run inside `shard_map` with an explicit plan:

  tokens  N split over every batch-like mesh axis whose running product divides N:
          ("data", "fsdp", "sequence") and, when the head is not vocab-parallel,
          also "tensor" (otherwise tensor ranks would redo the same tokens);
  vocab   vocab-parallel: W [H, V] split over "tensor" on V. Each shard runs the
          forward kernel on its V/tp columns and returns unnormalised statistics
          (max, sum exp, target logit, sum p z); they are merged with one pmax and
          three psums of [N_local] vectors, so no device ever holds the whole head.
          The backward uses the merged logsumexp: dW needs no cross-vocab sum (each
          shard owns its columns), dh is summed over "tensor" (f32).

dW is summed over the token axes only (in f32, rounded once to W's dtype), never
over every mesh axis. The custom_vjp lives outside the shard_maps, so autodiff
never transposes a shard_map (whose transpose would all-reduce over every axis).
Without a mesh the same code calls the kernels directly.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from mm_rlhf_jax.kernels.token_logprobs import common, pallas_tpu

_F32 = jnp.float32
TOKEN_AXES = ("data", "fsdp", "sequence")  # mesh axes that split examples / sequences (sharding.mesh)
VOCAB_AXIS = "tensor"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one call is split over the ambient mesh (mesh None: a single-device call)."""

    mesh: object = None  # jax AbstractMesh
    tokens: tuple[str, ...] | None = None  # axes splitting N
    vocab: str | None = None  # axis splitting V (vocab-parallel), or None

    @property
    def tokens_spec(self):
        return P(self.tokens)


def _ambient_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size <= 1:
        return None
    return mesh


def _split(mesh, candidates, dim: int):
    """The candidate axes (in order) whose running product divides dim, or None."""
    axes, prod = [], 1
    for name in candidates:
        size = dict(mesh.shape).get(name, 1)
        if size > 1 and dim % (prod * size) == 0:
            axes.append(name)
            prod *= size
    return tuple(axes) or None


def make_plan(n: int, vocab: int, vocab_parallel: bool | None) -> Plan:
    """The plan for N tokens and a V-column head under the ambient mesh.

    vocab_parallel: None = when the mesh has a "tensor" axis (> 1) that divides V;
    True = required (an error if impossible); False = W gathered on every device.
    """
    mesh = _ambient_mesh()
    tp = 1 if mesh is None else dict(mesh.shape).get(VOCAB_AXIS, 1)
    possible = tp > 1 and vocab % tp == 0
    if vocab_parallel and not possible:
        raise ValueError(f"token_logprobs: vocab_parallel=True needs a mesh axis {VOCAB_AXIS!r} (> 1) dividing "
                         f"V = {vocab}; the mesh is {None if mesh is None else dict(mesh.shape)}")
    if mesh is None:
        return Plan()
    vocab_axis = VOCAB_AXIS if (possible if vocab_parallel is None else vocab_parallel) else None
    token_candidates = TOKEN_AXES if vocab_axis else TOKEN_AXES + (VOCAB_AXIS,)
    tokens = _split(mesh, token_candidates, n)
    if tokens is None and vocab_axis is None:
        return Plan()
    return Plan(mesh, tokens, vocab_axis)


def _local_labels(labels, v_local: int, vocab_axis):
    """Labels relative to this vocab shard's first column (ids of other shards fall
    outside [0, V_local) and never match a column)."""
    if vocab_axis is None:
        return labels
    return labels - jax.lax.axis_index(vocab_axis).astype(jnp.int32) * v_local


def _forward_body(h, w, labels, *, cfg, vocab_axis):
    stats = pallas_tpu.forward_stats(h, w, _local_labels(labels, w.shape[1], vocab_axis), **cfg.fwd)
    m, l, t, sz = (stats[:, k] for k in (pallas_tpu.M, pallas_tpu.L, pallas_tpu.T, pallas_tpu.SZ))
    if vocab_axis is not None:  # merge the shards' online-softmax statistics
        m_all = jax.lax.pmax(m, vocab_axis)
        scale = jnp.exp(m - m_all)
        l, sz = jax.lax.psum(l * scale, vocab_axis), jax.lax.psum(sz * scale, vocab_axis)
        t, m = jax.lax.psum(t, vocab_axis), m_all
    logp, lse, ent = common.finish_stats(m, l, t, sz)
    return logp, lse, ent if cfg.with_entropy else jnp.zeros_like(ent)


def _backward_body(h, w, labels, lse, ent, g, ge, *, cfg, vocab_axis, token_axes):
    rows = pallas_tpu.pack_rows(lse, ent, g, ge)
    # Shards that are summed afterwards produce f32, rounded once after the sum.
    dh, dw = pallas_tpu.backward(
        h, w, _local_labels(labels, w.shape[1], vocab_axis), rows, **cfg.bwd,
        dh_dtype=_F32 if vocab_axis else h.dtype, dw_dtype=_F32 if token_axes else w.dtype)
    if vocab_axis is not None:
        dh = jax.lax.psum(dh, vocab_axis).astype(h.dtype)
    if token_axes:
        dw = jax.lax.psum(dw, token_axes).astype(w.dtype)
    return dh, dw


def _on_mesh(body, plan: Plan, in_specs, out_specs):
    if plan.mesh is None:
        return body
    # check_vma=False: pallas_call outputs carry no varying-axes types; the
    # collectives above are written out explicitly.
    return jax.shard_map(body, mesh=plan.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _specs(plan: Plan):
    tok, vocab = plan.tokens, plan.vocab
    return P(tok, None), P(None, vocab), P(tok)


@dataclasses.dataclass(frozen=True)
class Config:
    """Static arguments of one call: kernel options per direction and the plan."""

    fwd_items: tuple  # forward_stats keyword items
    bwd_items: tuple  # backward keyword items
    with_entropy: bool
    plan: Plan

    @property
    def fwd(self) -> dict:
        return dict(self.fwd_items)

    @property
    def bwd(self) -> dict:
        return dict(self.bwd_items)


def _forward(h, w, labels, cfg: Config):
    hs, ws, ts = _specs(cfg.plan)
    body = functools.partial(_forward_body, cfg=cfg, vocab_axis=cfg.plan.vocab)
    return _on_mesh(body, cfg.plan, (hs, ws, ts), (ts, ts, ts))(h, w, labels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _logprobs(h, w, labels, cfg):
    logp, _, ent = _forward(h, w, labels, cfg)
    return logp, ent


def _logprobs_fwd(h, w, labels, cfg):
    logp, lse, ent = _forward(h, w, labels, cfg)
    return (logp, ent), (h, w, labels, lse, ent)


def _logprobs_bwd(cfg, res, cts):
    h, w, labels, lse, ent = res
    g, ge = (c.astype(_F32) for c in cts)
    hs, ws, ts = _specs(cfg.plan)
    body = functools.partial(_backward_body, cfg=cfg, vocab_axis=cfg.plan.vocab, token_axes=cfg.plan.tokens)
    dh, dw = _on_mesh(body, cfg.plan, (hs, ws, ts, ts, ts, ts, ts), (hs, ws))(h, w, labels, lse, ent, g, ge)
    return dh, dw, None


_logprobs.defvjp(_logprobs_fwd, _logprobs_bwd)


def _local_shape(plan: Plan, n: int, vocab: int):
    if plan.mesh is None:
        return n, vocab
    shape = dict(plan.mesh.shape)
    for a in plan.tokens or ():
        n //= shape[a]
    return n, vocab // (shape[plan.vocab] if plan.vocab else 1)


def token_logprobs_pallas_tpu(h, w, labels, *, inv_temp: float, with_entropy: bool, blocks: common.BlockSizes,
                              interpret=False, vmem_limit: int, vocab_parallel: bool | None = None):
    """h[N, H], w[H, V], labels int32[N] -> (logp f32[N], entropy f32[N]) under the ambient mesh."""
    n, hid = h.shape
    plan = make_plan(n, w.shape[1], vocab_parallel)
    n_loc, v_loc = _local_shape(plan, n, w.shape[1])  # the kernels see one shard; tiles fit it
    bh = pallas_tpu.hidden_tile(hid, blocks.block_h)
    tiles = lambda bn, bv: (pallas_tpu.token_tile(n_loc, bn), pallas_tpu.vocab_tile(v_loc, bv))
    common_kw = (("inv_temp", inv_temp), ("with_entropy", with_entropy), ("vmem_limit", vmem_limit),
                 ("interpret", interpret))
    cfg = Config(
        fwd_items=common_kw + (("tiles", tiles(blocks.block_n, blocks.block_v) + (bh,)),),
        bwd_items=common_kw + (("dh_tiles", tiles(blocks.block_n_bwd, blocks.block_v_bwd)),
                         ("dw_tiles", tiles(*blocks.dw)), ("bh", bh)),
        with_entropy=with_entropy, plan=plan)
    return _logprobs(h, w, labels, cfg)
