import pytest

from data2vec.data.sampler import StepBatchSampler
from data2vec.errors import Data2VecError


def steps(sampler):
    return list(sampler)


def test_resume_reproduces_the_tail_of_an_uninterrupted_run():
    full = steps(StepBatchSampler(50, 8, seed=1, max_steps=20))
    tail = steps(StepBatchSampler(50, 8, seed=1, start_step=13, max_steps=20))
    assert tail == full[13:]


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_split_the_global_batch_exactly(world_size):
    one = steps(StepBatchSampler(50, 8, seed=1, max_steps=10))
    ranks = [steps(StepBatchSampler(50, 8, seed=1, max_steps=10, rank=r, world_size=world_size))
             for r in range(world_size)]
    for step, global_batch in enumerate(one):
        shares = [rank[step] for rank in ranks]
        assert sorted(sum(shares, [])) == sorted(global_batch)
        assert all(len(share) == 8 // world_size for share in shares)


def test_resume_at_another_world_size_sees_the_same_global_batches():
    one = steps(StepBatchSampler(50, 8, seed=1, max_steps=14))
    r0 = steps(StepBatchSampler(50, 8, seed=1, start_step=5, max_steps=14, rank=0, world_size=2))
    r1 = steps(StepBatchSampler(50, 8, seed=1, start_step=5, max_steps=14, rank=1, world_size=2))
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(g) for g in one[5:]]


def test_each_epoch_is_a_permutation():
    batches = steps(StepBatchSampler(40, 10, seed=0, max_steps=8))
    for epoch in range(2):
        seen = [i for batch in batches[epoch * 4:(epoch + 1) * 4] for i, e in batch]
        assert sorted(seen) == list(range(40))
        assert {e for batch in batches[epoch * 4:(epoch + 1) * 4] for _, e in batch} == {epoch}
    assert batches[0] != batches[4]


def test_the_incomplete_last_batch_of_an_epoch_is_dropped():
    batches = steps(StepBatchSampler(25, 10, seed=0, max_steps=3))
    assert [len(b) for b in batches] == [10, 10, 10]
    assert [b[0][1] for b in batches] == [0, 0, 1]


def test_the_order_depends_on_the_seed():
    assert steps(StepBatchSampler(50, 8, seed=0, max_steps=3)) != steps(StepBatchSampler(50, 8, seed=1, max_steps=3))


def test_bad_sizes_are_clear_errors():
    with pytest.raises(Data2VecError, match="fewer than train.batch_size"):
        StepBatchSampler(5, 8, seed=0)
    with pytest.raises(Data2VecError, match="divisible"):
        StepBatchSampler(50, 9, seed=0, world_size=2)
    with pytest.raises(Data2VecError, match="at least 1"):
        StepBatchSampler(50, 0, seed=0)


def test_length_counts_remaining_steps():
    assert len(StepBatchSampler(50, 8, seed=0, start_step=3, max_steps=10)) == 7
    with pytest.raises(TypeError):
        len(StepBatchSampler(50, 8, seed=0))
