"""Peak accelerator memory of this process, for the benchmark workers (ours and phaserEM's).

Imports nothing heavy itself: it asks whichever GPU library the run already imported.
"""

from __future__ import annotations

import sys


def device_peak_mib(backend: str) -> float | None:
    """Peak GPU memory [MiB] of this process for the run's ``backend``: jax's allocator
    high-water mark (``peak_bytes_in_use``) when jax ran on a GPU; the size cupy's memory
    pool grew to (it keeps freed blocks, so its size is the high-water mark); None on a CPU
    or for numpy. Asking the run's own library: a cupy run may have imported jax (optax),
    whose allocator then reads about 0."""
    if backend == "jax" and "jax" in sys.modules:
        jax = sys.modules["jax"]
        dev = jax.devices()[0]
        if dev.platform != "cpu":
            stats = dev.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"] / 2**20
    if backend == "cupy" and "cupy" in sys.modules:
        cupy = sys.modules["cupy"]
        return cupy.get_default_memory_pool().total_bytes() / 2**20
    return None
