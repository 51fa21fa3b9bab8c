"""Two processes, one fit: ``jax.distributed`` on localhost with gloo CPU collectives.

Each of 2 subprocesses (tests/_distributed_worker.py) has 2 CPU devices and holds half of
the rows of the same data set; together they fit one mixture to the global row-sharded
array. Both must get the parameters that the fit of all the rows in one process gets, and
invalid data in one process's rows must make both raise the same error (none may hang or
raise alone). Every wait is bounded; a hung pair is killed and its stderr shown.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _distributed_worker import EXIT_UNAVAILABLE, K, make_data

import jaxgmm

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "_distributed_worker.py"
N_PROCESSES = 2
TIMEOUT_S = 300  # for both processes together
GRACE_S = 60  # for the second process once the first has exited
RTOL = 1e-10
DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    """This environment with CPU-only JAX and 2 forced devices per process."""
    flags = re.sub(rf"{DEVICE_FLAG}=\S*", "", os.environ.get("XLA_FLAGS", "")).split()
    return {
        **os.environ,
        "XLA_FLAGS": " ".join([*flags, f"{DEVICE_FLAG}=2"]),
        "JAX_PLATFORMS": "cpu",
    }


def wait_all(procs: list[subprocess.Popen]) -> list[int] | None:
    """Exit codes of all processes, or None past TIMEOUT_S or GRACE_S after the first exit.

    The processes do the same work in lockstep, so once one has exited the other should
    follow within seconds; one still running GRACE_S later is stuck in a collective.
    """
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if None not in codes:
            return codes
        if any(code is not None for code in codes):
            deadline = min(deadline, time.monotonic() + GRACE_S)
        time.sleep(0.2)
    return None


def run_workers(tmp_path: Path, *args: str) -> tuple[list[Path], str]:
    """Start both workers, wait for both (bounded); their output path prefixes and logs.

    Skips the test when a worker reports that ``jax.distributed`` or gloo is unavailable;
    fails, with both workers' output, when one exits non-zero or hangs (see wait_all;
    the ones still running are killed then).
    """
    port = free_port()
    outs = [tmp_path / f"process{i}" for i in range(N_PROCESSES)]
    logs = [tmp_path / f"process{i}.log" for i in range(N_PROCESSES)]
    procs = []
    try:
        for i in range(N_PROCESSES):
            cmd = [sys.executable, str(WORKER), "--port", str(port), "--process-id", str(i)]
            with open(logs[i], "w") as log:
                procs.append(
                    subprocess.Popen(
                        [*cmd, "--out", str(outs[i]), *args],
                        cwd=ROOT,
                        env=worker_env(),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        codes = wait_all(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    report = "\n".join(
        f"--- process {i} (exit {p.returncode}):\n{logs[i].read_text()[-4000:]}"
        for i, p in enumerate(procs)
    )
    assert codes is not None, (
        f"a worker hung (limits {TIMEOUT_S} s, {GRACE_S} s) and was killed\n{report}"
    )
    if EXIT_UNAVAILABLE in codes and set(codes) <= {0, EXIT_UNAVAILABLE}:
        pytest.skip(f"jax.distributed with gloo is unavailable here:\n{report[-1500:]}")
    assert codes == [0] * N_PROCESSES, report
    return outs, report


@pytest.fixture(scope="module")
def worker_outputs(tmp_path_factory) -> tuple[list[Path], str]:
    """One pair of workers for both tests (starting the cluster and JAX is most of the
    cost): the clean data with full covariances, then the data with a NaN."""
    outs, report = run_workers(tmp_path_factory.mktemp("distributed"), "--cases", "full", "nan")
    return outs, report


def test_two_processes_fit_the_global_array_like_one_process_fits_all_rows(worker_outputs):
    prefixes, report = worker_outputs
    outs = [prefix.with_name(f"{prefix.name}-full") for prefix in prefixes]
    for out in outs:
        error = out.with_suffix(".json")
        assert not error.exists(), f"{out.name}: fit raised {error.read_text()}\n{report}"
    results = [dict(np.load(out.with_suffix(".npz"))) for out in outs]
    expected = jaxgmm.fit(make_data(), K, covariance_type="full", key=0)
    reference = {
        "weights": expected.params.weights,
        "means": expected.params.means,
        "covariances": expected.params.covariances,
        "lower_bound": expected.lower_bound,
        "n_iter": expected.n_iter,
    }
    for name, value in reference.items():
        value = np.asarray(value)
        for i, result in enumerate(results):
            if name == "n_iter":
                np.testing.assert_array_equal(result[name], value, err_msg=f"process {i}")
            else:
                scale = float(np.max(np.abs(value)))
                np.testing.assert_allclose(
                    result[name], value, rtol=RTOL, atol=RTOL * scale, err_msg=f"{name}, {i}"
                )
        # replicated results: the processes agree bit for bit
        np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)


def test_nan_in_one_process_rows_raises_the_same_error_in_both(worker_outputs):
    prefixes, report = worker_outputs
    outs = [prefix.with_name(f"{prefix.name}-nan") for prefix in prefixes]
    for out in outs:
        assert not out.with_suffix(".npz").exists(), f"{out.name} fitted data with NaN\n{report}"
    errors = [json.loads(out.with_suffix(".json").read_text()) for out in outs]
    for i, error in enumerate(errors):
        assert error["type"] == "ValueError", (i, error, report)
        assert "NaN" in error["message"], (i, error, report)
    assert errors[0] == errors[1], errors
