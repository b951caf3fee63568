"""Deterministic, resumable training batches.

Each epoch cuts the concatenated train shards into windows of seq_len+1 tokens at a per-epoch phase offset and
visits them in a seeded random order; every token is seen once per epoch. The whole state is one integer (windows
consumed by all ranks together), so a resumed run continues with exactly the batches it would have seen, and a
run on W ranks sees the same windows per step as one process with the same global batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alrt_core.data.shards import read_shard


class TrainBatches:
    def __init__(self, files: list[Path], seq_len: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.shards = [read_shard(path) for path in files]
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.position = 0
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._window_counts: dict[int, int] = {}
        if self.windows_in_epoch(0) == 0:
            raise ValueError(f"training data has fewer than {seq_len + 1} tokens")

    @property
    def total_tokens(self) -> int:
        return sum(int(shard.shape[0]) for shard in self.shards)

    def _phase(self, epoch: int) -> int:
        # Epoch 0 starts at offset 0; later epochs shift the window grid so windows straddle new boundaries.
        return 0 if epoch == 0 else int(np.random.default_rng([self.seed, epoch, 7]).integers(self.seq_len))

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, start offset) of every window of `epoch`, in visiting order."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1], self._epoch_cache[2]
        phase = self._phase(epoch)
        shard_ids, offsets = [], []
        for index, shard in enumerate(self.shards):
            count = max(0, (int(shard.shape[0]) - phase - 1) // self.seq_len)
            shard_ids.append(np.full(count, index, dtype=np.int64))
            offsets.append(phase + self.seq_len * np.arange(count, dtype=np.int64))
        all_ids, all_offsets = np.concatenate(shard_ids), np.concatenate(offsets)
        order = np.random.default_rng([self.seed, epoch]).permutation(all_ids.shape[0])
        self._epoch_cache = (epoch, all_ids[order], all_offsets[order])
        return self._epoch_cache[1], self._epoch_cache[2]

    def windows_in_epoch(self, epoch: int) -> int:
        # Cached: `_window` asks for every earlier epoch's count on each lookup.
        if epoch not in self._window_counts:
            phase = self._phase(epoch)
            self._window_counts[epoch] = sum(max(0, (int(s.shape[0]) - phase - 1) // self.seq_len) for s in self.shards)
        return self._window_counts[epoch]

    @property
    def tokens_per_epoch(self) -> int:
        return self.windows_in_epoch(0) * self.seq_len

    @property
    def epoch(self) -> float:
        """Epochs completed, fractional (from the global position)."""
        return self.position / self.windows_in_epoch(0)

    def _window(self, number: int) -> np.ndarray:
        # Window counts differ by at most one between epochs (phase shift); walk epochs to find `number`.
        epoch = 0
        while number >= self.windows_in_epoch(epoch):
            number -= self.windows_in_epoch(epoch)
            epoch += 1
        ids, offsets = self._layout(epoch)
        start = int(offsets[number])
        return np.asarray(self.shards[int(ids[number])][start : start + self.seq_len + 1], dtype=np.int64)

    def next_batch(self, sequences_per_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, targets) of shape (sequences_per_rank, seq_len); all ranks advance together."""
        first = self.position + self.rank * sequences_per_rank
        windows = np.stack([self._window(first + i) for i in range(sequences_per_rank)])
        self.position += sequences_per_rank * self.world_size
        tokens = torch.from_numpy(windows)
        return tokens[:, :-1], tokens[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed or state["seq_len"] != self.seq_len:
            raise ValueError("batch state was saved for another seed or sequence length")
        self.position = int(state["position"])
