"""One process of the 2-process test: a sharded forward of a tiny decoder over 8 global devices, and the
placement module's multi-process transfers.

Usage: python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npy
(OUT.npy: process 0's replicated logits; OUT.npy.<process>.npz: what each process's placement calls returned)
"""

import sys

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from mm_rlhf_jax import distributed
from mm_rlhf_jax.sharding import TRAIN_RULES, logical_shardings, make_mesh, placement, replicated
from mm_rlhf_jax.testing.multihost import forward_inputs, tiny_decoder


def main(process_id: int, num_processes: int, port: int, out: str) -> None:
    distributed.initialize(f"127.0.0.1:{port}", num_processes, process_id, local_device_count=4)
    assert jax.device_count() == 8 and jax.process_count() == num_processes
    model = tiny_decoder()
    ids = forward_inputs()
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh), nn.logical_axis_rules(TRAIN_RULES):
        abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)["params"]
        shardings = logical_shardings(abstract, mesh, TRAIN_RULES)
        init = lambda k: nn.meta.unbox(model.init(k, ids)["params"])
        params = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
        in_sharding = placement.row_sharding(mesh, 2)
        batch = jax.make_array_from_callback(ids.shape, in_sharding, lambda idx: ids[idx])
        forward = jax.jit(lambda p, x: model.apply({"params": p}, x).logits,
                          in_shardings=(shardings, in_sharding), out_shardings=replicated(mesh))
        logits = forward(params, batch)
        # The same forward with batch-sharded logits, fetched to every process.
        sharded = jax.jit(lambda p, x: model.apply({"params": p}, x).logits, in_shardings=(shardings, in_sharding),
                          out_shardings=placement.row_sharding(mesh, 3))(params, batch)
        slot = placement.host_slot(8, mesh)
        mine = np.arange(slot.rows) + 100 * process_id
        np.savez(f"{out}.{process_id}.npz", fetched=placement.fetch(sharded), slot=np.array([slot.rows, slot.index,
                                                                                              slot.count]),
                 gathered=placement.gather_rows(mine, mesh), primary=placement.from_primary(np.array([process_id])),
                 flags=placement.from_primary(np.array([process_id == 0, False])),
                 any=np.array(placement.any_process(process_id == 1)))
    local = np.asarray(logits.addressable_data(0))
    if process_id == 0:
        np.save(out, local)
    multihost_utils.sync_global_devices("done")
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
