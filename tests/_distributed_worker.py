"""One process of the 2-process ``jax.distributed`` fit in tests/test_distributed.py.

Run as ``python tests/_distributed_worker.py --port P --process-id I --out PATH --cases ...``
with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` and ``JAX_PLATFORMS=cpu``: two such
processes on localhost make one 4-device CPU cluster (gloo collectives). Each process takes
its half of the rows of a data set that both generate from the same seed, builds the global
row-sharded array with ``jax.make_array_from_process_local_data`` and calls ``jaxgmm.fit``.

Runs one fit per ``--cases`` entry, in order, in the same cluster: a covariance type
(the clean data) or ``nan`` (full covariances, one NaN in process 1's rows). For each case
writes ``PATH-CASE.npz`` (the replicated results) after the fit, or ``PATH-CASE.json`` with
the exception's type and message when the fit raises. Exit codes: 0 done (results or error
written), 77 ``jax.distributed`` or gloo is unavailable here (the test skips), anything else
a failure (traceback on stderr).
"""

import argparse
import inspect
import json
import sys
import traceback

import numpy as np

EXIT_UNAVAILABLE = 77
N, D, K = 800, 3, 3
N_PROCESSES = 2
NAN_ROW = 601  # in process 1's half of the rows
CENTRES = np.array([[0.0, 0.0, 0.0], [2.5, 0.0, 0.5], [0.0, 2.5, -0.5]])
SCALES = np.array([1.0, 0.7, 1.3])


def make_data(with_nan: bool = False) -> np.ndarray:
    """(800, 3) float64 from three overlapping blobs (row i from blob i % 3), fixed seed.

    With ``with_nan``, one value of process 1's rows is NaN.
    """
    rng = np.random.default_rng(0)
    X = CENTRES[np.arange(N) % 3] + rng.normal(size=(N, D)) * SCALES
    if with_nan:
        X[NAN_ROW, 1] = np.nan
    return X


def local_rows(X: np.ndarray, process_id: int) -> np.ndarray:
    """The contiguous block of rows that process ``process_id`` holds."""
    n_local = len(X) // N_PROCESSES
    return X[process_id * n_local : (process_id + 1) * n_local]


def start_cluster(port: int, process_id: int):
    """Configure gloo and x64, join the 2-process cluster, return a 4-device ("data",) mesh.

    A cross-process sum checks that collectives work. Any failure here means the
    environment cannot run the test: exit with EXIT_UNAVAILABLE.
    """
    try:
        import jax
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.config.update("jax_enable_x64", True)
        # Short timeouts bound a failure; older JAX versions lack some of them.
        timeouts = dict(
            initialization_timeout=60, heartbeat_timeout_seconds=30, shutdown_timeout_seconds=30
        )
        accepted = inspect.signature(jax.distributed.initialize).parameters
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=N_PROCESSES,
            process_id=process_id,
            **{name: value for name, value in timeouts.items() if name in accepted},
        )
        mesh = jax.make_mesh((len(jax.devices()),), ("data",), devices=jax.devices())
        ones = np.ones((jax.local_device_count(), 1))
        total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))(
            jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), ones)
        )
        assert float(total.addressable_data(0)) == len(jax.devices()) == 4, total
        return mesh
    except Exception:
        traceback.print_exc()
        print("jax.distributed with gloo is unavailable here", file=sys.stderr)
        sys.exit(EXIT_UNAVAILABLE)


def replicated_value(array) -> np.ndarray:
    """The value of a result that must be replicated on every device, from a local copy."""
    if not array.is_fully_replicated:
        raise AssertionError(f"result not replicated: shape {array.shape}, {array.sharding}")
    return np.asarray(array.addressable_data(0))


def main() -> int:
    """Join the cluster, fit this process's rows as part of the global array, write results."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--out", required=True, help="path prefix: -CASE.npz or -CASE.json")
    parser.add_argument("--cases", nargs="+", default=["full"])
    args = parser.parse_args()

    mesh = start_cluster(args.port, args.process_id)
    for case in args.cases:
        fit_one(mesh, args.process_id, case, f"{args.out}-{case}")
    import jax

    jax.distributed.shutdown()
    return 0


def fit_one(mesh, process_id: int, case: str, out: str) -> None:
    """Fit one case's global array (see the module docstring); write out.npz or out.json."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxgmm

    with_nan = case == "nan"
    covariance_type = "full" if with_nan else case
    X = make_data(with_nan)
    X_global = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("data")), local_rows(X, process_id)
    )
    assert X_global.shape == X.shape, X_global.shape
    for shard in X_global.addressable_shards:  # global row order is the data set's order
        np.testing.assert_array_equal(np.asarray(shard.data), X[shard.index])
    try:
        result = jaxgmm.fit(X_global, K, covariance_type=covariance_type, key=0)
        jax.block_until_ready(result)
    except Exception as err:
        traceback.print_exc()
        with open(out + ".json", "w") as f:
            json.dump({"type": type(err).__name__, "message": str(err)}, f)
    else:
        params = result.params
        values = {
            "weights": params.weights,
            "means": params.means,
            "covariances": params.covariances,
            "lower_bound": result.lower_bound,
            "n_iter": result.n_iter,
        }
        np.savez(out + ".npz", **{k: replicated_value(v) for k, v in values.items()})


if __name__ == "__main__":
    sys.exit(main())
