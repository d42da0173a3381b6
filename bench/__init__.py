"""Benchmarks of the webhook engine (issue 6): run ``python -m bench``; see bench/README.md.

Every workload runs the engine, the receiver and any load generator in separate processes, as in
production, so that no part borrows another's event loop or CPU time, and reports its figures as
ratios to baselines measured in the same run, because this machine is shared and noisy.
"""

from __future__ import annotations
