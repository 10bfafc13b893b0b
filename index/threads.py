"""Thread policy for a serving process: one BLAS / OpenMP thread per search.

A server answers many requests at once, each on its own thread; letting every
search also fan out over OpenBLAS and FAISS OpenMP pools oversubscribes the
cores. On a loaded machine this is not a small effect: a 64-query batch over the
ML-1M catalog took ~30 ms with OpenBLAS's 2 threads and ~0.5 ms with one
(``benchmarks/index_bench.py`` measures it as ``exact_blas_default``).

The limit is process-wide, so the library never sets it behind the caller's
back: a serving process calls :func:`limit_serving_threads` once at start-up.
"""

from __future__ import annotations

import faiss
from threadpoolctl import threadpool_limits


def limit_serving_threads(threads: int = 1) -> None:
    """Cap the BLAS pools numpy uses and FAISS's OpenMP pool at ``threads`` for the rest of the process."""
    if threads < 1:
        raise ValueError("threads must be at least 1")
    threadpool_limits(limits=threads, user_api="blas")
    faiss.omp_set_num_threads(threads)
