"""Step-indexed data: sampler indices per rank and step, seeded samples, loader RNG hygiene."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from volseg.engine.step_data import StepDataset, StepSampler, derive_seed, make_loader


class _Noise(StepDataset):
    def sample(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        a = torch.from_numpy(rng.standard_normal(3).astype(np.float32))
        b = torch.rand(2, generator=self.torch_generator(rng))
        return torch.cat([a, b, torch.tensor([float(index)])])


def test_indices_follow_formula_and_are_disjoint_across_ranks() -> None:
    world, batch, steps = 3, 2, 5
    per_rank = [list(StepSampler(0, steps, batch, r, world)) for r in range(world)]
    flat = [i for idx in per_rank for i in idx]
    assert len(flat) == len(set(flat)) == world * batch * steps  # disjoint
    assert sorted(flat) == list(range(world * batch * steps))  # nothing skipped
    # rank 1, step 2: i = (2 * 3 + 1) * 2 + k
    assert per_rank[1][2 * batch : 3 * batch] == [14, 15]
    assert list(StepSampler(0, 1, batch, 2, world).step_indices(4)) == [28, 29]


def test_resume_offset_continues_the_uninterrupted_sequence() -> None:
    full = list(StepSampler(0, 10, 4, rank=1, world_size=2))
    resumed = StepSampler(6, 10, 4, rank=1, world_size=2)
    assert list(resumed) == full[6 * 4 :]
    assert len(resumed) == 16


@pytest.mark.parametrize(
    "args", [(0, 5, 0, 0, 1), (0, 5, 2, 2, 2), (0, 5, 2, -1, 2), (6, 5, 2, 0, 1), (0, 5, 2, 0, 0)]
)
def test_bad_sampler_arguments_are_refused(args: tuple) -> None:
    with pytest.raises(ValueError):
        StepSampler(*args)


def test_samples_depend_only_on_seed_and_index() -> None:
    ds = _Noise(seed=7)
    assert torch.equal(ds[5], ds[5])
    assert torch.equal(ds[5], _Noise(seed=7)[5])
    assert not torch.equal(ds[5][:5], ds[6][:5])
    assert not torch.equal(ds[5][:5], _Noise(seed=8)[5][:5])
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)
    assert 0 <= derive_seed(123, 456) < 2**31


def test_loader_batches_do_not_depend_on_workers_or_start() -> None:
    ds = _Noise(seed=3)
    plain = list(make_loader(ds, StepSampler(0, 4, 3), num_workers=0))
    workers = list(make_loader(ds, StepSampler(0, 4, 3), num_workers=2))
    resumed = list(make_loader(ds, StepSampler(2, 4, 3), num_workers=2))
    assert len(plain) == 4 and plain[0].shape == (3, 6)
    assert all(torch.equal(a, b) for a, b in zip(plain, workers, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(plain[2:], resumed, strict=True))
    assert plain[1][:, -1].tolist() == [3.0, 4.0, 5.0]  # step 1 of one rank, batch 3


def test_loader_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    next(iter(make_loader(_Noise(), StepSampler(0, 2, 2), num_workers=0)))
    assert torch.equal(before, torch.get_rng_state())


def test_sample_must_be_implemented() -> None:
    with pytest.raises(NotImplementedError, match="sample"):
        StepDataset()[0]
