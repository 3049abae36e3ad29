"""Step-indexed training data: a batch is a pure function of (base seed, global sample index).

Sample ``k`` of the batch that rank ``r`` (of ``W``) draws at global step ``s`` has index
``i = (s * W + r) * B + k``. :class:`StepDataset` turns ``i`` into a sample with random
generators seeded from ``(seed, i)`` alone, so the data a run sees does not depend on
DataLoader workers, prefetching or where the run was interrupted: resuming at step ``s``
reproduces the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info


def derive_seed(*keys: int) -> int:
    """A 31-bit seed that depends on every key (NumPy ``SeedSequence`` hashing)."""
    entropy = [int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0] >> 1)


class StepSampler(Sampler[int]):
    """Yields the sample indices of steps ``start_step .. total_steps - 1`` for one rank.

    Use with ``DataLoader(batch_size=sampler.batch_size)`` (see :func:`make_loader`): each
    run of ``batch_size`` consecutive indices is one step's batch for this rank.
    """

    def __init__(
        self,
        start_step: int,
        total_steps: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if start_step < 0 or total_steps < start_step:
            raise ValueError(f"bad step range [{start_step}, {total_steps})")
        self.start_step = start_step
        self.total_steps = total_steps
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    def step_indices(self, step: int) -> range:
        """The sample indices of this rank's batch at ``step``."""
        first = (step * self.world_size + self.rank) * self.batch_size
        return range(first, first + self.batch_size)

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start_step, self.total_steps):
            yield from self.step_indices(step)

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.batch_size


class StepDataset(Dataset):
    """Base class for training data addressed by a global sample index.

    Subclasses implement :meth:`sample`, drawing every random choice (crop position,
    augmentation) from the ``rng`` they are given and nothing else. For a torch generator use
    :meth:`torch_generator`; for MONAI random transforms call
    ``transform.set_random_state(seed=int(rng.integers(2**31)))`` before applying them.
    The index space is unbounded: ``len()`` is not defined and ``index`` is not a position in
    a list (use ``index % n`` or ``rng`` to choose a case).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator for sample ``index`` (same ``(seed, index)`` -> same stream)."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))

    @staticmethod
    def torch_generator(rng: np.random.Generator) -> torch.Generator:
        """A CPU torch generator seeded from ``rng`` (advances ``rng`` by one draw)."""
        return torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))

    def __getitem__(self, index: int) -> Any:
        return self.sample(int(index), self.rng_for(index))

    def sample(self, index: int, rng: np.random.Generator) -> Any:
        """Build sample ``index`` using only ``rng`` for randomness."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample(index, rng)")


def worker_init_fn(worker_id: int) -> None:
    """Keep workers single-threaded and give stray global-RNG users distinct seeds.

    Samples do not depend on these seeds (a :class:`StepDataset` seeds from the index); this
    only stops accidental ``np.random`` use from repeating across workers.
    """
    torch.set_num_threads(1)
    info = get_worker_info()
    base = info.seed if info is not None else torch.initial_seed()
    seed = derive_seed(base, worker_id)
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: Dataset,
    sampler: StepSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Any = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader that yields exactly one batch per step of ``sampler``.

    It owns a private ``torch.Generator`` so that creating its iterator never draws from the
    global torch RNG (which would shift dropout streams after a resume).
    """
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["worker_init_fn"] = worker_init_fn
        kwargs["persistent_workers"] = False
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
