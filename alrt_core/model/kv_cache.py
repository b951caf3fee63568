"""Preallocated key/value cache for incremental decoding: one slot per layer application, one row per sequence.

Shapes follow the attention layout after the GQA projection: (batch, kv_heads, max_len, head_dim), so the cache
costs num_kv_heads (not num_heads) per slot. With depth recurrence a looped block runs several times per token
and each of its applications has its own slot (`GPT.new_cache` sizes the cache by the number of applications).
The model advances the rows once per forward call, after all slots have written their keys and values at the
same positions. `tokens` keeps the token ids when the model needs the history (document mask, SmearGate,
BigramHash read earlier tokens); `truncate` keeps it consistent since it only moves lengths.

Rows: by default a forward call reads and extends every row, all at one length (`length`). A server decoding
several requests at once `select`s the rows of the next call instead: each row keeps its own length, a new request
is prefilled into a free row alone, and one decode step extends every running row by one token at that row's own
position (`row_starts`; the model then masks each row's keys to its own length). A row's keys and values are
written and read only at its own positions, so what it computes never depends on the other rows' contents.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from alrt_core.model.embeddings_extra import NO_TOKEN


class KVCache:
    def __init__(
        self,
        num_slots: int,
        batch_size: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_slots, batch_size, num_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.tokens = torch.full((batch_size, max_len), NO_TOKEN, dtype=torch.long, device=device)
        self.max_len = max_len
        self.lengths = [0] * batch_size  # positions held by each row
        self.rows: list[int] | None = None  # the rows the next forward call reads and extends; None: every row
        self._row_index: Tensor | None = None
        self._row_span: slice | None = None
        self._call_positions: Tensor | None = None  # `_positions` of the current call

    def select(self, rows: Sequence[int] | None) -> None:
        """Make the next forward calls read and extend `rows` (in that order: input row i is cache row rows[i]),
        or every row again (None)."""
        if rows is not None and (not rows or len(set(rows)) != len(rows) or not all(0 <= r < len(self.lengths) for r in rows)):
            raise ValueError(f"rows must be distinct rows of the {len(self.lengths)} in the cache, got {list(rows)}")
        self._call_positions = None
        self.rows = None if rows is None else list(rows)
        self._row_index = None if rows is None else torch.tensor(self.rows, dtype=torch.long, device=self.keys.device)
        # Consecutive ascending rows are read as a view; any other selection is gathered (a copy per slot).
        consecutive = rows is not None and list(rows) == list(range(rows[0], rows[0] + len(rows)))
        self._row_span = slice(rows[0], rows[0] + len(rows)) if consecutive and rows is not None else None

    def _selected(self) -> list[int]:
        return [self.lengths[row] for row in self.rows] if self.rows is not None else self.lengths

    @property
    def length(self) -> int:
        """The one length of the rows of the next call (a call whose rows have different lengths: `row_starts`)."""
        lengths = self._selected()
        if any(length != lengths[0] for length in lengths):
            raise ValueError(f"the selected rows have different lengths {lengths}: use row_starts")
        return lengths[0]

    def row_starts(self) -> Tensor | None:
        """Each selected row's length (the position of its next token) when they differ; None when they share one."""
        lengths = self._selected()
        if all(length == lengths[0] for length in lengths):
            return None
        return torch.tensor(lengths, dtype=torch.long, device=self.keys.device)

    @property
    def remaining(self) -> int:
        """Positions left in the fullest selected row."""
        return self.max_len - max(self._selected())

    def check_room(self, new: int) -> None:
        """Raise unless `new` positions fit every selected row (the model checks before a call writes anything)."""
        fullest = max(self._selected())
        if fullest + new > self.max_len:
            raise ValueError(f"KV cache full: {fullest} + {new} positions exceed its {self.max_len}")

    def _positions(self, new: int) -> Tensor:
        """(rows, new) cache positions of this call's tokens in each selected row: built once per call and shared by
        every slot's write (the lengths move only in `advance`, `truncate` and `select`)."""
        if self._call_positions is None or self._call_positions.shape[1] != new:
            starts = torch.tensor(self._selected(), dtype=torch.long, device=self.keys.device)
            self._call_positions = starts[:, None] + torch.arange(new, device=self.keys.device)
        return self._call_positions

    def write(self, slot: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store this call's keys/values in `slot` (a layer application, not a block: see the module doc) and
        return all cached ones of that slot up to and including them (up to the longest selected row)."""
        new = keys.shape[2]
        if self.rows is None:
            start = self.length
            end = start + new
            self.keys[slot, :, :, start:end] = keys.to(self.keys.dtype)
            self.values[slot, :, :, start:end] = values.to(self.values.dtype)
            return self.keys[slot, :, :, :end], self.values[slot, :, :, :end]
        assert self._row_index is not None
        rows, positions = self._row_index[:, None].expand(-1, new), self._positions(new)
        # Advanced indices around a slice put their dimensions first: (rows, new, kv_heads, head_dim).
        self.keys[slot][rows, :, positions] = keys.transpose(1, 2).to(self.keys.dtype)
        self.values[slot][rows, :, positions] = values.transpose(1, 2).to(self.values.dtype)
        end = max(self._selected()) + new
        rows_read = self._row_span if self._row_span is not None else self._row_index
        return self.keys[slot, rows_read, :, :end], self.values[slot, rows_read, :, :end]

    def write_tokens(self, input_ids: Tensor) -> None:
        """Record this call's token ids at each row's next positions (before the layers run)."""
        if self.rows is None:
            start = self.length
            self.tokens[:, start : start + input_ids.shape[1]] = input_ids
            return
        assert self._row_index is not None
        self.tokens[self._row_index[:, None], self._positions(input_ids.shape[1])] = input_ids

    def selected_tokens(self, end: int) -> Tensor:
        """(rows, end) recorded token ids of the selected rows."""
        return self.tokens[:, :end] if self._row_index is None else self.tokens[self._row_index, :end]

    def previous_tokens(self) -> Tensor:
        """Each selected row's last recorded token (the one before this call's), NO_TOKEN for an empty row."""
        lengths = torch.tensor(self._selected(), dtype=torch.long, device=self.tokens.device)
        rows = self._row_index if self._row_index is not None else torch.arange(len(self.lengths), device=self.tokens.device)
        last = self.tokens[rows, (lengths - 1).clamp_min(0)]
        return torch.where(lengths > 0, last, torch.full_like(last, NO_TOKEN))

    def advance(self, count: int) -> None:
        self._call_positions = None
        for row in self.rows if self.rows is not None else range(len(self.lengths)):
            self.lengths[row] += count

    def truncate(self, length: int) -> None:
        """Forget positions from `length` on in the selected rows (e.g. to regenerate a reply; 0 frees a row)."""
        current = self._selected()
        if not all(0 <= length <= row_length for row_length in current):
            raise ValueError(f"cannot truncate a cache of length {max(current)} to {length}")
        self._call_positions = None
        for row in self.rows if self.rows is not None else range(len(self.lengths)):
            self.lengths[row] = length

    def key_count(self, positions: Tensor) -> int:
        """How many cached positions a call at per-row `positions` (rows, new) reads: up to its longest row."""
        return int(positions[:, -1].max()) + 1

    @property
    def per_row(self) -> bool:
        """Whether each row is read at its own positions (a selection of rows), not at one shared length."""
        return self.rows is not None


class StaticKVCache(KVCache):
    """Fixed shapes for a compiled decode step (gpt-fast's static cache).

    Each row's next position lives in a tensor (`position`), and every call reads all `max_len` cached positions,
    with the keys past each row's own position masked out. A one-token call then has the same shapes and the same
    Python control flow at every step, so one compiled graph (one CUDA graph) serves the whole generation: nothing
    in it reads a length back to the host. The host-side checks (`remaining`, `truncate`) read the tensor outside
    the compiled step. Rows are always read all together (no `select`)."""

    def __init__(self, num_slots: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.position = torch.zeros(batch_size, dtype=torch.long, device=device)
        super().__init__(num_slots, batch_size, num_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self._all_rows = torch.arange(batch_size, device=device)
        if self.keys.is_cuda:
            # CUDA graphs replay fixed addresses: the buffers the step writes in place must never move.
            for buffer in (self.keys, self.values, self.tokens, self.position):
                torch._dynamo.mark_static_address(buffer)

    @property  # type: ignore[override]
    def lengths(self) -> list[int]:
        return [int(value) for value in self.position.tolist()]

    @lengths.setter
    def lengths(self, values: list[int]) -> None:
        self.position.copy_(torch.tensor(values, dtype=torch.long))

    @property
    def per_row(self) -> bool:
        return True

    def select(self, rows: Sequence[int] | None) -> None:
        if rows is not None:
            raise ValueError("a static cache reads all its rows in every call")

    def row_starts(self) -> Tensor:
        return self.position

    def key_count(self, positions: Tensor) -> int:
        return self.max_len

    def check_room(self, new: int) -> None:
        if not torch.compiler.is_compiling():  # the host-side check; a compiled step never reads lengths back
            super().check_room(new)

    def _positions(self, new: int) -> Tensor:
        return self.position[:, None] + torch.arange(new, device=self.position.device)

    def write(self, slot: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        new = keys.shape[2]
        rows, positions = self._all_rows[:, None].expand(-1, new), self._positions(new)
        self.keys[slot][rows, :, positions] = keys.transpose(1, 2).to(self.keys.dtype)
        self.values[slot][rows, :, positions] = values.transpose(1, 2).to(self.values.dtype)
        return self.keys[slot], self.values[slot]

    def write_tokens(self, input_ids: Tensor) -> None:
        self.tokens[self._all_rows[:, None], self._positions(input_ids.shape[1])] = input_ids

    def selected_tokens(self, end: int) -> Tensor:
        return self.tokens

    def previous_tokens(self) -> Tensor:
        last = self.tokens[self._all_rows, (self.position - 1).clamp_min(0)]
        return torch.where(self.position > 0, last, torch.full_like(last, NO_TOKEN))

    def advance(self, count: int) -> None:
        self.position.add_(count)

    def truncate(self, length: int) -> None:
        current = self.lengths
        if not all(0 <= length <= row_length for row_length in current):
            raise ValueError(f"cannot truncate a cache of length {max(current)} to {length}")
        self.position.fill_(length)
