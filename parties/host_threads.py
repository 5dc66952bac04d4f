"""Compute threads for party processes that share one host.

PyTorch sizes its intra-op (OpenMP) thread pool to all of the host's cores in every
process, so three parties on one host run three pools over the same cores: their threads
preempt each other and wait at every parallel region's barrier.  A GeLU over a BERT-base
activation (128 x 3072) took 19-24 s over three party processes on two cores, 2.9-3.9 s
with one thread per party (benchmarks/RESULTS.md, "Deployed over mTLS").  Each party
therefore gets its share of the cores, unless the user chose (``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from veil.mpc.communicator import WORLD_SIZE

THREADS_VARIABLE = "OMP_NUM_THREADS"


def host_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def shared_host_env(
    environ: Mapping[str, str] | None = None, parties: int = WORLD_SIZE
) -> dict[str, str]:
    """``environ`` (default: this process's) for a party process beside ``parties - 1`` others."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault(THREADS_VARIABLE, str(max(1, host_cores() // parties)))
    return env
