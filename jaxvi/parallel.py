"""Data parallelism: the datum axis split over the devices of a ``jax.sharding.Mesh``.

jaxvi's fits are written as sums over data (E-step statistics, log p(D), ELBO terms and their
gradients). With the data sharded along its leading axis, XLA's partitioner runs every per-datum
computation on the device that holds the datum and turns those sums into all-reduces: no
hand-written communication, and the same numbers as on one device up to the order of additions.

``infer(..., mesh=mesh)`` shards the data with ``shard_data``; data that arrive already sharded
(e.g. ``jax.make_array_from_process_local_data`` across hosts) are used as they are.

Several hosts: call ``jax.distributed.initialize()`` on every process, build the mesh over the global
``jax.devices()``, give each process its slice of the data with
``jax.make_array_from_process_local_data(NamedSharding(mesh, P(mesh.axis_names)), local_data)``, and
call ``jaxvi.infer`` on every process with the same arguments (SPMD). On CPUs, cross-process
collectives need ``jax.config.update("jax_cpu_collectives_implementation", "gloo")`` first; the tests
run two such processes on one machine.
"""
from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["data_sharding", "shard_data"]

PyTree = Any


def data_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of the datum axis over every axis of ``mesh`` (the other axes replicated)."""
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def shard_data(data: PyTree, mesh: Mesh) -> PyTree:
    """``data`` with every leaf's leading (datum) axis split over ``mesh``'s devices.

    Raises:
      ValueError: ``mesh`` is not a Mesh, or the number of data is not a multiple of its devices.
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    leaves = jax.tree_util.tree_leaves(data)
    n = leaves[0].shape[0]
    if n % mesh.size:
        raise ValueError(f"mesh: the {n} data must split evenly over the mesh's {mesh.size} devices; drop or pad "
                         f"{n % mesh.size} of them (padding changes the fit unless the padded data weigh nothing)")
    sharding = data_sharding(mesh)
    return jax.tree_util.tree_map(lambda a: jax.device_put(a, sharding), data)
