"""lrml.prefetch: a hint that changes no result, for 2-D C-ordered tables only."""
import numba
import numpy as np
import pytest

from lrml.prefetch import prefetch_row


@numba.njit
def sum_rows_prefetching(table, rows):
    total = 0.0
    for k in range(len(rows)):
        if k + 1 < len(rows):
            prefetch_row(table, rows[k + 1])
        total += table[rows[k]].sum()
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prefetching_changes_no_result_and_emits_a_prefetch_per_cache_line(dtype):
    """The hint is built with numba's ``cgutils`` and LLVM's prefetch intrinsic (docs/design.md, "Internals"): it
    must compile on this numba and reach the compiled code as a prefetch."""
    table = np.arange(7 * 37, dtype=dtype).reshape(7, 37)  # rows of 148 or 296 bytes: lines cut mid-row
    rows = np.array([6, 0, 3, 6, 1])
    assert sum_rows_prefetching(table, rows) == table[rows].sum()
    (llvm,) = [text for signature, text in sum_rows_prefetching.inspect_llvm().items()
               if str(signature[0].dtype) == np.dtype(dtype).name]
    assert "call void @llvm.prefetch" in llvm


@numba.njit
def prefetch(table, row):
    prefetch_row(table, row)


@pytest.mark.parametrize("table", [np.zeros(5), np.zeros((4, 6))[:, ::2]], ids=["1-D", "strided"])
def test_a_table_that_is_not_c_ordered_2d_is_a_typing_error(table):
    with pytest.raises(numba.core.errors.TypingError, match="prefetch_row"):
        prefetch(table, 1)
