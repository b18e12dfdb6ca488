"""Orbax checkpoints of {train state, data-iterator state}; resume from the workdir.

Orbax writes each step into a temporary directory and renames it when
complete, so a crash or preemption mid-save never corrupts the latest good
checkpoint. The data iterator's state is saved beside the train state, so a
resumed run sees exactly the batches an uninterrupted run would have.

The directory reaches orbax unchanged when it is a URL (orbax writes gs://
through tensorstore and, there, marks complete steps with a commit file
instead of a rename) and made absolute when local. Every process creates
the manager and saves its own shards; orbax's primary host (process 0)
writes the metadata.
"""

from typing import Any

import jax
import orbax.checkpoint as ocp

from mm_rlhf_jax import storage


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
        self.directory = storage.absolute(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_state: dict[str, Any] | None = None) -> None:
        args = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data_state or {})}
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        """Restores into `abstract_state` (ShapeDtypeStructs carrying the target shardings)."""
        out = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
        )
        return out["state"], dict(out["data"] or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree, shardings):
    """ShapeDtypeStructs with target shardings, the restore target for `tree`.

    None leaves (the optimizer-state slots of frozen parameters) stay None; their
    shardings entry (a replicated placeholder) is ignored.
    """
    return jax.tree.map(lambda x, s: None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings, is_leaf=lambda x: x is None)
