"""mmtm.loaders.sampling: order, flips and shards are pure functions of (seed, epoch, rank, world_size)."""
import numpy as np
import pytest

from mmtm.loaders.sampling import epoch_order, flip_table, num_rank_rows, split_batches


def test_train_order_is_a_seeded_permutation_that_changes_every_epoch():
    orders = [epoch_order(50, train=True, seed=3, epoch=e, rank=0, world_size=1) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(50)) and order.dtype == np.int64
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    again = epoch_order(50, train=True, seed=3, epoch=1, rank=0, world_size=1)
    assert np.array_equal(again, orders[1])
    assert not np.array_equal(epoch_order(50, train=True, seed=4, epoch=1, rank=0, world_size=1), orders[1])


@pytest.mark.parametrize("num_rows, world_size", [(10, 3), (9, 3), (7, 2), (5, 1)])
def test_train_shards_are_equal_disjoint_and_drop_only_the_tail(num_rows, world_size):
    shards = [epoch_order(num_rows, train=True, seed=0, epoch=2, rank=r, world_size=world_size)
              for r in range(world_size)]
    usable = num_rows - num_rows % world_size
    assert {len(s) for s in shards} == {usable // world_size}
    seen = np.concatenate(shards)
    assert len(set(seen.tolist())) == usable
    whole = epoch_order(num_rows, train=True, seed=0, epoch=2, rank=0, world_size=1)
    assert set(seen.tolist()) == set(whole[:usable].tolist())  # the same permutation, its tail dropped
    for r, shard in enumerate(shards):
        assert len(shard) == num_rank_rows(num_rows, train=True, rank=r, world_size=world_size)


def test_eval_order_is_file_order_strided_over_ranks_without_drops():
    shards = [epoch_order(7, train=False, seed=9, epoch=5, rank=r, world_size=3) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6], [1, 4], [2, 5]]
    assert [num_rank_rows(7, train=False, rank=r, world_size=3) for r in range(3)] == [3, 2, 2]


def test_flips_depend_on_seed_and_epoch_only_and_are_fair():
    a = flip_table(2000, seed=1, epoch=0)
    assert a.shape == (2000, 2) and a.dtype == bool
    assert np.array_equal(a, flip_table(2000, seed=1, epoch=0))
    assert not np.array_equal(a, flip_table(2000, seed=1, epoch=1))
    assert not np.array_equal(a, flip_table(2000, seed=2, epoch=0))
    assert 0.45 < a.mean() < 0.55
    assert 0.4 < (a[:, 0] != a[:, 1]).mean() < 0.6  # each view draws its own flip


def test_split_batches_keeps_or_drops_the_partial_batch():
    order = np.arange(10)
    assert [b.tolist() for b in split_batches(order, 4, drop_last=True)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [b.tolist() for b in split_batches(order, 4, drop_last=False)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert split_batches(order[:3], 4, drop_last=True) == []
