import pytest

from data2vec.data.sampler import StepBatchSampler
from data2vec.errors import Data2VecError


def steps(sampler):
    return list(sampler)


def test_resume_reproduces_the_tail_of_an_uninterrupted_run():
    full = steps(StepBatchSampler(50, 8, seed=1, max_steps=20))
    tail = steps(StepBatchSampler(50, 8, seed=1, start_step=13, max_steps=20))
    assert tail == full[13:]


def test_ranks_split_the_global_batch_exactly():
    one = steps(StepBatchSampler(50, 8, seed=1, max_steps=10))
    r0 = steps(StepBatchSampler(50, 8, seed=1, max_steps=10, rank=0, world_size=2))
    r1 = steps(StepBatchSampler(50, 8, seed=1, max_steps=10, rank=1, world_size=2))
    for g, a, b in zip(one, r0, r1):
        assert sorted(a + b) == sorted(g) and len(a) == len(b) == 4


def test_each_epoch_is_a_permutation():
    sampler = StepBatchSampler(40, 10, seed=0, max_steps=8)
    batches = steps(sampler)
    for epoch in range(2):
        seen = [i for batch in batches[epoch * 4:(epoch + 1) * 4] for i, e in batch]
        assert sorted(seen) == list(range(40))
        assert {e for batch in batches[epoch * 4:(epoch + 1) * 4] for _, e in batch} == {epoch}
    assert batches[0] != batches[4]


def test_bad_sizes_are_clear_errors():
    with pytest.raises(Data2VecError, match="fewer than train.batch_size"):
        StepBatchSampler(5, 8, seed=0)
    with pytest.raises(Data2VecError, match="divisible"):
        StepBatchSampler(50, 9, seed=0, world_size=2)


def test_length_counts_remaining_steps():
    assert len(StepBatchSampler(50, 8, seed=0, start_step=3, max_steps=10)) == 7
