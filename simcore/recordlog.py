"""A run's records as the engine writes them: computes as packed columns, the others as tuples.

A training step's records are mostly computes; keeping them as C arrays
(numpy takes them without a conversion per value) and building the frame
column by column is what lets a step of millions of operations finish in
seconds.  The frame is the one ``simcore.result.records_frame`` gives for
the same records, sorted by (rank, op index).
"""
from __future__ import annotations

from array import array
from operator import itemgetter

import numpy as np
import pandas as pd

from simcore.result import RECORD_COLUMNS, TEXT_COLUMNS, records_frame

# The engine's messages and collectives record validated integers here (rank,
# op index, peer, bytes) and floats in the rest; pandas' inference over record
# tuples types them so too (int64, and float64 for flops, 0.0 in every such record).
_MESSAGE_DTYPES = {"rank": np.int64, "op_index": np.int64, "peer": np.int64, "nbytes": np.int64,
                   "flops": np.float64, "start_s": np.float64, "end_s": np.float64, "energy_j": np.float64}


class RecordLog:
    """Records of one run: ``add`` a ``Record``'s fields as a tuple; a compute's through ``compute_columns``."""

    def __init__(self):
        self.others: list[tuple] = []
        self._compute_ints = array("q")    # rank, op index of each compute record
        self._compute_floats = array("d")  # start, end, energy
        self._compute_bytes: list = []     # as the op gives them (int or float)
        self._compute_flops: list = []
        self.add = self.others.append

    def compute_columns(self) -> tuple:
        """How a compute is recorded, as bound appends: (ints.extend((rank, index)), floats.extend((start_s,
        end_s, energy_j)), nbytes.append, flops.append); a training step records millions, and a method
        call per record would cost a tenth of its simulation."""
        return (self._compute_ints.extend, self._compute_floats.extend, self._compute_bytes.append,
                self._compute_flops.append)

    def __len__(self) -> int:
        return len(self.others) + len(self._compute_flops)

    def _compute_tuples(self):
        ints, floats = self._compute_ints, self._compute_floats
        return [(ints[2 * i], ints[2 * i + 1], "", "compute", "", -1, self._compute_bytes[i],
                 self._compute_flops[i], floats[3 * i], floats[3 * i + 1], floats[3 * i + 2])
                for i in range(len(self._compute_flops))]

    def frame(self, program_lengths: list[int]) -> pd.DataFrame:
        """The records, sorted by (rank, op index).

        Sorting permutes every column; a text column is permuted as small
        integer codes and turned into strings once, in order (permuting an
        array of Python strings costs a cache miss per record).
        """
        n, m = len(self._compute_flops), len(self.others)
        compute = self._compute_columns(n) if n else None
        others = _message_columns(self.others) if m else None
        if (n and compute is None) or (m and others is None) or not (n or m):
            # An unusual value (None, a huge integer): pandas infers every column.
            frame = records_frame(self.others + self._compute_tuples())
            return frame.sort_values(["rank", "op_index"], kind="stable").reset_index(drop=True)
        parts = [part for part in (others, compute) if part is not None]

        def joined(name):
            return parts[0][name] if len(parts) == 1 else np.concatenate([part[name] for part in parts])

        rank, index = joined("rank"), joined("op_index")
        lengths = np.asarray(program_lengths, dtype=np.int64)
        if len(rank) == int(lengths.sum()):
            # Every operation has its record, and (rank, op index) is unique:
            # record k goes to row first[rank] + index, no sort needed.
            first = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            rows = first[rank] + index

            def place(values):
                out = np.empty_like(values)
                out[rows] = values
                return out
        else:
            # (rank, op index) is unique per record: one integer key, any sort gives the same order.
            order = np.argsort(rank * (int(index.max()) + 1) + index)

            def place(values):
                return values[order]
        columns = {}
        for name in RECORD_COLUMNS:
            columns[name] = _text_column([part[name] for part in parts], place) if name in TEXT_COLUMNS \
                else place(joined(name))
        return pd.DataFrame(columns, copy=False)

    def _compute_columns(self, n: int) -> dict | None:
        ints = np.frombuffer(self._compute_ints, dtype=np.int64).reshape(n, 2)
        floats = np.frombuffer(self._compute_floats, dtype=np.float64).reshape(n, 3)
        nbytes, flops = np.array(self._compute_bytes), np.array(self._compute_flops)
        if nbytes.dtype.kind not in "iuf" or flops.dtype.kind not in "iuf":
            return None
        zeros = np.zeros(n, dtype=np.intp)
        empty = (zeros, np.array([""], dtype=object))
        return {"rank": ints[:, 0], "op_index": ints[:, 1], "group": empty,
                "kind": (zeros, np.array(["compute"], dtype=object)), "algorithm": empty,
                "peer": np.full(n, -1, dtype=np.int64), "nbytes": nbytes, "flops": flops,
                "start_s": floats[:, 0], "end_s": floats[:, 1], "energy_j": floats[:, 2]}


def _message_columns(records: list) -> dict | None:
    """Columns of record tuples, text as (codes, strings); None where a value does not fit its type."""
    n = len(records)
    data = {}
    try:
        for j, name in enumerate(RECORD_COLUMNS):
            values = map(itemgetter(j), records)
            if name in TEXT_COLUMNS:
                codes, uniques = pd.factorize(np.fromiter(values, dtype=object, count=n), use_na_sentinel=False)
                if not all(type(u) is str for u in uniques):
                    return None
                data[name] = (codes, np.asarray(uniques, dtype=object))
            else:
                data[name] = np.fromiter(values, dtype=_MESSAGE_DTYPES[name], count=n)
    except (TypeError, ValueError, OverflowError):
        return None
    return data


def _text_column(parts: list, place) -> np.ndarray:
    """Strings from (codes, strings) parts, concatenated and put in order by ``place``."""
    index: dict[str, int] = {}
    remapped = []
    for codes, strings in parts:
        lookup = np.array([index.setdefault(s, len(index)) for s in strings], dtype=np.intp)
        remapped.append(lookup[codes])
    table = np.empty(len(index), dtype=object)
    table[:] = list(index)
    codes = remapped[0] if len(remapped) == 1 else np.concatenate(remapped)
    return table[place(codes)]
