"""Batches sliced out of tensors already on the device, in a seeded order that a checkpoint can resume."""

import torch


class InMemoryBatches:
    """Batches sliced out of tensors that already live on the device; reshuffled every epoch if asked.

    No per-sample Python and no PIL: one index operation per batch. Resumable mid-epoch (Lightning saves
    `state_dict()` with a checkpoint taken inside an epoch): the shuffling generator before the epoch's order was
    drawn and the number of batches already served, so a resumed run sees exactly the batches it would have seen.
    Between epochs the generator's state is the data module's to save.
    With `world_size` > 1 (DDP) every process draws the same order and takes its own share of each global batch
    of `batch_size` rows, so the processes together step on the batches of a one-process run.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1, generator: torch.Generator | None = None):
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        # its state advances each epoch: a deterministic order that differs between epochs
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self._epoch_state = self.generator.get_state()  # the generator before this epoch's order was drawn
        self._served = 0  # batches of the current epoch handed out
        self._skip = 0  # batches to skip at the next epoch start (a mid-epoch resume)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            self._epoch_state = self.generator.get_state()
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        first, self._skip, self._served = self._skip, 0, self._skip
        for batch in range(first, len(self)):
            start = batch * self.batch_size
            rows = slice(start, min(start + self.batch_size, n))
            if self.world_size > 1:  # this process's share of the global batch
                size = rows.stop - rows.start
                share = -(-size // self.world_size)
                rows = slice(rows.start + self.rank * share, min(rows.start + (self.rank + 1) * share, rows.stop))
            self._served = batch + 1
            if self.shuffle:
                idx = order[rows]
                yield self.x[idx], self.y[idx]
            else:
                yield self.x[rows], self.y[rows]

    def state_dict(self) -> dict:
        if self._served in (0, len(self)):  # between epochs: the next epoch draws a new order
            return {"generator": self.generator.get_state(), "served": 0}
        return {"generator": self._epoch_state, "served": self._served}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._epoch_state, self._skip, self._served = state["generator"], state["served"], 0
