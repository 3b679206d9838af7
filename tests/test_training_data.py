"""The streamed training order: which rows each rank and DataLoader worker reads, and when."""

import random
from collections import Counter

import pytest

from adamllm_core.training.data import WINDOW_ROWS, training_order

GROUP = 64


def corpus(shards: int, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    shard_rows = [rng.randint(100, 300) for _ in range(shards)]
    lengths = [rng.randint(20, 2000) for _ in range(sum(shard_rows))]
    return shard_rows, lengths


def group_of(shard_rows: list[int], index: int) -> tuple[int, int]:
    start = 0
    for shard, rows in enumerate(shard_rows):
        if index < start + rows:
            return shard, (index - start) // GROUP
        start += rows
    raise IndexError(index)


def test_one_reader_trains_every_row_once_in_a_seeded_order() -> None:
    shard_rows, lengths = corpus(12)
    lengths[5] = lengths[700] = -1  # left out (over max_seq_len)
    plan = training_order(
        shard_rows, GROUP, lengths, batch_size=8, world=1, workers=0, seed=3, group_by_length=True
    )
    assert sorted(plan.order) == [i for i, n in enumerate(lengths) if n >= 0]
    assert plan.padded == 0 and plan.readers == 1
    again = training_order(
        shard_rows, GROUP, lengths, batch_size=8, world=1, workers=0, seed=3, group_by_length=True
    )
    assert again.order == plan.order
    other = training_order(
        shard_rows, GROUP, lengths, batch_size=8, world=1, workers=0, seed=4, group_by_length=True
    )
    assert other.order != plan.order and sorted(other.order) == sorted(plan.order)


def test_length_grouping_cuts_padding_within_windows() -> None:
    shard_rows, lengths = corpus(20)

    def padding(group_by_length: bool) -> float:
        order = training_order(
            shard_rows,
            GROUP,
            lengths,
            batch_size=8,
            world=1,
            workers=0,
            seed=0,
            group_by_length=group_by_length,
        ).order
        batches = [order[i : i + 8] for i in range(0, len(order), 8)]
        slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths) / slots

    grouped, shuffled = padding(True), padding(False)
    assert grouped < 0.1 and shuffled > 0.4


@pytest.mark.parametrize(("world", "workers"), [(2, 0), (2, 3), (1, 4), (4, 2)])
def test_each_reader_reads_only_its_own_row_groups(world: int, workers: int) -> None:
    """Batch j goes to rank j % world and on it to worker (j // world) % workers (accelerate
    deals whole batches in turn; the DataLoader hands batches to its workers in turn)."""
    shard_rows, lengths = corpus(30, seed=world * 10 + workers)
    batch = 4
    plan = training_order(
        shard_rows,
        GROUP,
        lengths,
        batch_size=batch,
        world=world,
        workers=workers,
        seed=1,
        group_by_length=True,
    )
    batches = [plan.order[i : i + batch] for i in range(0, len(plan.order), batch)]
    assert all(len(b) == batch for b in batches[:-1])
    if world > 1:  # ranks need equal numbers of full batches
        assert len(batches) % world == 0 and len(batches[-1]) == batch
    readers: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for j, rows in enumerate(batches):
        reader = (j % world, (j // world) % max(1, workers))
        readers.setdefault(reader, set()).update(group_of(shard_rows, i) for i in rows)
    assert len(readers) == world * max(1, workers)
    seen = Counter(group for groups in readers.values() for group in groups)
    assert max(seen.values()) == 1  # no row group is read by two readers
    # every row is trained; rows repeat only to even out the ranks' last batches
    counts = Counter(plan.order)
    assert set(counts) == set(range(len(lengths)))
    assert sum(counts.values()) - len(lengths) == plan.padded
    assert plan.padded < world * max(1, workers) * (GROUP + batch)
    # a worker's window spans a bounded number of row groups
    assert plan.window_groups <= WINDOW_ROWS // GROUP + 8


def test_few_rows_are_split_across_ranks_below_a_row_group() -> None:
    plan = training_order(
        [24], GROUP, [10] * 24, batch_size=2, world=2, workers=0, seed=0, group_by_length=True
    )
    batches = [plan.order[i : i + 2] for i in range(0, len(plan.order), 2)]
    rank0 = {i for b in batches[0::2] for i in b}
    rank1 = {i for b in batches[1::2] for i in b}
    assert rank0 | rank1 == set(range(24)) and not rank0 & rank1 and plan.padded == 0
