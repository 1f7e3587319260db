"""Scale-out for tfm: one code path from one CPU to a GPU node or a TPU pod slice.

- `mesh`: the ("data", "fsdp", "tensor") device mesh from `config.mesh`, multi-host start-up.
- `sharding`: logical axis rules -> NamedShardings for parameters, optimizer state and batches;
  sharded initialisation.
- `step`: the train / eval step under jax.jit over the mesh, or jax.pmap over local devices.
- `report`: each array's sharding and the bytes per device.

Checkpoints move to another mesh through `tfm.checkpoint`: `Checkpoints.restore` onto the target
that `abstract_state` builds.
"""

from tfm.parallel.mesh import (MESH_AXES, distributed_plan, initialize_distributed, make_mesh, mesh_from_config,
                               mesh_shape, process_batch_slice)
from tfm.parallel.report import memory_per_device, plan, sharding_report
from tfm.parallel.sharding import (abstract_state, batch_sharding, batch_spec, check_divisible, logical_rules,
                                   logical_to_mesh_spec, process_rows, shard_batch, sharded_init, state_shardings)
from tfm.parallel.step import PMAP_AXIS, jit_step, pmap_step, replicate, split_batch
