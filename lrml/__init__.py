"""LRML (Tay, Luu, Hui, WWW 2018) and its baselines on MovieLens, in plain PyTorch."""
import os

# numba starts its thread pool once, when first imported, and runs its loops on as many of its threads as torch
# is given (lrml.fused.use_torch_threads). OpenMP's idle threads spin by default, so each pool thread a process
# does not use takes CPU time from the others: two one-CPU trials on two cores, each with a thread per core, ran
# 5x slower (docs/speed.md). So the pool holds the threads OpenMP is given (Ray sets OMP_NUM_THREADS to a worker's
# CPUs), unless OMP_WAIT_POLICY is passive: idle threads then sleep, and a pool of a thread per core lets a
# process use the cores it is lent later (a search's last trials: lrml_tune.sweep.cores).
_openmp_threads = os.environ.get("OMP_NUM_THREADS", "")
_idle_threads_sleep = os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive"
if _openmp_threads.isdigit() and int(_openmp_threads) > 0 and not _idle_threads_sleep:
    os.environ.setdefault("NUMBA_NUM_THREADS", _openmp_threads)

__version__ = "0.1.0"
