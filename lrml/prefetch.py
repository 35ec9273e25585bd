"""A software prefetch for numba kernels that visit table rows in an order the CPU cannot predict.

The fused loss and the row-wise Adam read rows of tables far larger than the caches at random
ids; hinting the row a few iterations ahead lets its load overlap the arithmetic on the current
one (``bench/throughput.py``).
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LINE = 64  # bytes per cache line: one hint each
AHEAD = 4  # rows ahead: the fastest of 1, 2, 4 and 8 (docs/speed.md)


@intrinsic
def prefetch_row(typingctx, table, row):
    """Start loading every cache line of ``table[row]`` (a C-ordered 2-D array); no effect on results."""
    if not (isinstance(table, types.Array) and table.ndim == 2 and table.layout == "C"
            and isinstance(row, types.Integer)):
        return None  # numba then reports a typing error naming these argument types

    def codegen(context, builder, signature, args):
        table_type = signature.args[0]
        array = context.make_array(table_type)(context, builder, args[0])
        start = cgutils.get_item_pointer(context, builder, table_type, array,
                                         [args[1], context.get_constant(types.intp, 0)])
        base = builder.bitcast(start, ir.IntType(8).as_pointer())
        width = builder.mul(cgutils.unpack_tuple(builder, array.shape, 2)[1],
                            context.get_constant(types.intp, table_type.dtype.bitwidth // 8))
        int32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [base.type] + [int32] * 3),
                                              "llvm.prefetch.p0")

        def prefetch(offset):
            builder.call(hint, [builder.gep(base, [offset]), int32(0), int32(3), int32(1)])  # read, keep, data

        with cgutils.for_range_slice(builder, context.get_constant(types.intp, 0), width,
                                     context.get_constant(types.intp, LINE)) as (offset, _):
            prefetch(offset)
        # a row that starts mid-line ends in a line the steps above stop short of: its last byte's
        prefetch(builder.sub(width, context.get_constant(types.intp, 1)))
        return context.get_dummy_value()
    return types.void(table, row), codegen
