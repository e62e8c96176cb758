"""OpenMP's idle threads sleep instead of spinning: set before torch loads its OpenMP runtime.

torch's CPU kernels run on OpenMP threads (libgomp), which by default spin on a core while
they wait for the next parallel region. On a machine where other processes want those cores
(a laptop with a browser open, a shared server), the spinning threads and the descheduled ones
wait on each other: ``benchmarks/results/step_time_cpu.md`` measured fit's step 16x slower at
two threads on a loaded two-core machine, and ``OMP_WAIT_POLICY=PASSIVE`` brought it back
(544 ms to 34 ms a step at batch 128). ``import ppvae`` sets it unless the environment already
says otherwise; it takes effect only where ppvae is imported before torch (the ``ppvae``
command always is), as OpenMP reads it once, when it loads.
"""

import os

WAIT_POLICY = os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
