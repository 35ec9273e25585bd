"""lrml.prefetch: a hint that changes no result, for 2-D C-ordered tables only."""
import ctypes
import re

import llvmlite.binding as llvm
import numba
import numpy as np
import pytest
from numba import types

from lrml.prefetch import LINE, prefetch_row


@numba.njit
def sum_rows_prefetching(table, rows):
    total = 0.0
    for k in range(len(rows)):
        if k + 1 < len(rows):
            prefetch_row(table, rows[k + 1])
        total += table[rows[k]].sum()
    return total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prefetching_changes_no_result_and_reaches_the_compiled_code(dtype):
    """The hint is built with numba's ``cgutils`` and LLVM's prefetch intrinsic (docs/design.md, "Internals"): it
    must compile on this numba and reach the compiled code as a prefetch."""
    table = np.arange(7 * 37, dtype=dtype).reshape(7, 37)  # rows of 148 or 296 bytes: lines cut mid-row
    rows = np.array([6, 0, 3, 6, 1])
    assert sum_rows_prefetching(table, rows) == table[rows].sum()
    (llvm,) = [text for signature, text in sum_rows_prefetching.inspect_llvm().items()
               if str(signature[0].dtype) == np.dtype(dtype).name]
    assert "call void @llvm.prefetch" in llvm


@pytest.mark.parametrize("dtype, columns", [(np.float32, 37), (np.float64, 37), (np.float32, 16), (np.float64, 3)])
def test_the_hint_covers_every_cache_line_of_the_row_and_nothing_else(dtype, columns):
    """The compiled hint run with LLVM's prefetch swapped for a function that records each address: the lines
    hinted are exactly those ``table[row]`` occupies, each as a read into all cache levels."""
    hinted = run_recording_hints(dtype)
    table = np.zeros((9, columns), dtype)
    for row in range(len(table)):
        start = table[row].ctypes.data
        addresses = hinted(table, row)
        assert all(start <= address < start + table[row].nbytes for address, *_ in addresses)
        last = (start + table[row].nbytes - 1) // LINE
        assert {address // LINE for address, *_ in addresses} == set(range(start // LINE, last + 1))
        assert {tuple(flags) for _, *flags in addresses} == {(0, 3, 1)}  # read, keep in every level, data


def run_recording_hints(dtype):
    """``prefetch_row`` compiled for ``dtype`` (a C-callable taking the table's pointer and shape), its LLVM IR
    calling a recorder in place of ``llvm.prefetch``: a function of (table, row) returning the hints it gave."""
    float_type = numba.from_dtype(np.dtype(dtype))

    @numba.cfunc(types.void(types.CPointer(float_type), types.int64, types.int64, types.int64))
    def hint(pointer, rows, columns, row):
        prefetch_row(numba.carray(pointer, (rows, columns)), row)

    text = hint.inspect_llvm()
    assert "@llvm.prefetch.p0(" in text
    text = re.sub(r"declare void @llvm\.prefetch\.p0\([^)]*\)[^\n]*", "declare void @record(ptr, i32, i32, i32)", text)
    hints = []
    recorder = RECORDER(lambda address, *flags: hints.append((address, *flags)))
    llvm.add_symbol("record", ctypes.cast(recorder, ctypes.c_void_p).value)
    module = llvm.parse_assembly(text.replace("@llvm.prefetch.p0(", "@record("))
    engine = llvm.create_mcjit_compiler(module, llvm.Target.from_default_triple().create_target_machine())
    engine.finalize_object()
    compiled = CALL(engine.get_function_address(hint.native_name))

    def run(table, row):
        hints.clear()
        compiled(table.ctypes.data, *table.shape, row)
        return list(hints)
    run.keep = (engine, recorder)  # the compiled code and the callback live as long as the function
    return run


RECORDER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32)
CALL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64)


@numba.njit
def prefetch(table, row):
    prefetch_row(table, row)


@pytest.mark.parametrize("table", [np.zeros(5), np.zeros((4, 6))[:, ::2]], ids=["1-D", "strided"])
def test_a_table_that_is_not_c_ordered_2d_is_a_typing_error(table):
    with pytest.raises(numba.core.errors.TypingError, match="prefetch_row"):
        prefetch(table, 1)
