"""LRML (Tay, Luu, Hui, WWW 2018) and its baselines on MovieLens, in plain PyTorch."""
import os

# numba starts its thread pool once, when first imported, and the threads it does not use still take CPU
# time: with its default of one thread per core, trials that share a machine's cores slow each other down
# (docs/speed.md). So the pool defaults to the threads OpenMP (and so torch) is given; Ray sets
# OMP_NUM_THREADS to a worker's CPUs.
_openmp_threads = os.environ.get("OMP_NUM_THREADS", "")
if _openmp_threads.isdigit() and int(_openmp_threads) > 0:
    os.environ.setdefault("NUMBA_NUM_THREADS", _openmp_threads)

__version__ = "0.1.0"
