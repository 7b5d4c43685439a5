"""How an optimiser asks the `Distiller` for a step's task and distillation gradients apart.

An optimiser that wants them (`kdkeras.training.DOT`) defines

    pack_split_gradients(task_grads, distill_grads, variables) -> list

taking, per variable, the gradient of the task part of the loss (the student's own
loss and its regularisers) and of the distillation part (every method's weighted
term and the methods' own regularisers), each None where that part does not reach
the variable, and returning one gradient per variable for its own
`apply_gradients`. The Distiller then runs its forward pass once under a persistent
tape and takes two gradients of it (two backward passes, as the reference's two
`backward` calls); every other optimiser gets the summed gradient of one backward
pass, as before. Packing into one `apply_gradients` call keeps what Keras does
around it (loss-scale unscaling and its finite check, the all-reduce under
`tf.distribute`, the iteration count) unchanged. No TensorFlow here.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["PACK_METHOD", "split_packer"]

#: the method an optimiser defines to take the two gradients apart
PACK_METHOD = "pack_split_gradients"


def split_packer(optimizer: Any) -> Callable | None:
    """The optimiser's `pack_split_gradients`, or None for an ordinary optimiser.

    A wrapper's inner optimiser counts (a `keras.optimizers.LossScaleOptimizer`
    under mixed precision holds it as `inner_optimizer`): the packed gradients go
    through the wrapper, which unscales them and hands them on."""
    pack = getattr(optimizer, PACK_METHOD, None)
    if pack is None and getattr(optimizer, "inner_optimizer", None) is not None:
        pack = getattr(optimizer.inner_optimizer, PACK_METHOD, None)
    return pack
