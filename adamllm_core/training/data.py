"""Training data streamed from a dataset's Parquet shards: nothing encoded is kept.

The order of an epoch is planned up front from each row's length alone (a mixture's
`tokens` column; for other data its text tokens). Rows are dealt to readers (every rank
times its DataLoader workers) in pieces of one Parquet row group, so each reader fetches
only the row groups it trains on; within a window of a reader's rows the order is
shuffled and cut into batches of similar length. `__getitem__` reads, decodes and encodes
one record; a record its processor rejects is logged with its id and replaced by the next
row of the same reader.
"""

import bisect
import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adamllm_core.dataset import Dataset, RowGroupReader
from adamllm_core.pipeline import PairImages
from adamllm_core.schemas import CONVERSATIONS
from adamllm_core.training.encoding import Encoded

# Rows a reader shuffles and groups by length at a time: a window is what one DataLoader
# worker holds (its row groups, images included), so it stays a few hundred rows.
WINDOW_ROWS = 512
# A row the processor rejects is replaced by a later row of the same reader; this many
# rejected in a row means the data, not a record, is at fault.
MAX_REPLACEMENTS = 64


@dataclass(frozen=True)
class Plan:
    """An epoch's order (row indices, in the order the Trainer reads them) and its makeup."""

    order: list[int]
    readers: int
    padded: int  # rows repeated so that every rank gets the same number of full batches
    window_groups: int  # the most row groups one reader's window spans


def training_order(
    shard_rows: list[int],
    group_rows: int,
    lengths: list[int],
    *,
    batch_size: int,
    world: int,
    workers: int,
    seed: int,
    group_by_length: bool,
) -> Plan:
    """The order of one epoch. Row i of the dataset is `lengths[i]` tokens long and lies in
    shard s at `i - sum(shard_rows[:s])`; `lengths[i] < 0` leaves row i out.

    Batch j of the order goes to rank j % world (accelerate deals whole batches in turn)
    and, on that rank, to DataLoader worker (j // world) % workers: reader (rank, worker)
    reads only the pieces (row groups, or smaller when rows are few) dealt to it."""
    readers = world * max(1, workers)
    rng = random.Random(seed)
    total = sum(1 for length in lengths if length >= 0)
    piece = max(1, min(group_rows, math.ceil(total / readers)))
    shards = list(range(len(shard_rows)))
    rng.shuffle(shards)
    starts = [0]
    for rows in shard_rows:
        starts.append(starts[-1] + rows)
    streams: list[list[list[int]]] = [[] for _ in range(readers)]
    windows: list[list[int]] = [[] for _ in range(readers)]
    window_groups = 1
    dealt = [0] * readers

    def flush(reader: int) -> None:
        nonlocal window_groups
        rows = windows[reader]
        groups = {
            (s := bisect.bisect_right(starts, i) - 1, (i - starts[s]) // group_rows) for i in rows
        }
        window_groups = max(window_groups, len(groups))
        rng.shuffle(rows)
        if group_by_length:
            rows.sort(key=lambda i: lengths[i], reverse=True)
        batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
        if batches and len(batches[-1]) < batch_size:  # carried into the next window
            windows[reader] = batches.pop()
        else:
            windows[reader] = []
        rng.shuffle(batches)
        streams[reader] += batches

    for shard in shards:
        for begin in range(starts[shard], starts[shard + 1], piece):
            rows = [
                i for i in range(begin, min(begin + piece, starts[shard + 1])) if lengths[i] >= 0
            ]
            if not rows:
                continue
            # to the reader with the fewest rows: short last pieces would otherwise keep
            # landing on the same reader
            reader = min(range(readers), key=lambda r: (dealt[r], r))
            dealt[reader] += len(rows)
            windows[reader] += rows
            if len(windows[reader]) >= WINDOW_ROWS:
                flush(reader)
    for reader in range(readers):
        flush(reader)
        if windows[reader]:  # the reader's last rows: a batch short of full
            streams[reader].append(windows[reader])
    padded = 0
    if readers > 1:
        # every batch but the last must be full (the DataLoader cuts the order in fixed
        # steps), ranks need equal batch counts, and a reader that ran out early would shift
        # every later batch onto another worker: repeat a reader's own latest rows
        most = max(len(stream) for stream in streams)
        for stream in streams:
            own = [i for batch in stream[-2:] for i in batch]
            if not own:
                continue
            if len(stream[-1]) < batch_size:
                missing = batch_size - len(stream[-1])
                stream[-1] = stream[-1] + [own[k % len(own)] for k in range(missing)]
                padded += missing
            while len(stream) < most:
                stream.append([own[k % len(own)] for k in range(batch_size)])
                padded += batch_size
        if world > 1 and any(not stream for stream in streams):
            raise ValueError(f"{total} rows cannot give each of {world} ranks a batch")
    order: list[int] = []
    for t in range(max((len(s) for s in streams), default=0)):
        for worker in range(max(1, workers)):
            for rank in range(world):
                stream = streams[worker * world + rank]
                if t < len(stream):
                    order += stream[t]
    return Plan(order=order, readers=readers, padded=padded, window_groups=window_groups)


class RejectLog:
    """Records the processor refused, one JSON line each, in one file per rank and process:
    DataLoader workers are processes, so a list in memory would not reach the summary."""

    def __init__(self, folder: Path, rank: int):
        self.folder = folder
        self.rank = rank

    def add(self, record_id: str, reason: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"id": record_id, "reason": reason[:300]}) + "\n"
        with open(self.folder / f"rank{self.rank}-{os.getpid()}.jsonl", "a") as handle:
            handle.write(line)

    def read(self) -> tuple[dict[str, str], Counter[str]]:
        """This rank's distinct refused ids with their reasons, and counts by reason kind."""
        refused: dict[str, str] = {}
        for path in sorted(self.folder.glob(f"rank{self.rank}-*.jsonl")):
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                refused.setdefault(entry["id"], entry["reason"])
        return refused, Counter(reason.split(":", 1)[0] for reason in refused.values())

    def clear(self) -> None:
        for path in self.folder.glob(f"rank{self.rank}-*.jsonl"):
            path.unlink()


class StreamedRecords:
    """A map-style dataset over a training dataset in `plan.order`: position p reads row
    `plan.order[p]` (its image resolved from the pairs for a mixture) and encodes it."""

    def __init__(
        self,
        data_uri: str,
        plan: Plan,
        encode: Callable[[dict[str, Any]], Encoded],
        *,
        batch_size: int,
        max_seq_len: int,
        rejects: RejectLog,
    ):
        dataset = Dataset(data_uri)
        self.plan = plan
        self.encode = encode
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.rejects = rejects
        self.rows = RowGroupReader(dataset, keep=plan.window_groups + 2)
        self.data_uri, self.manifest = data_uri, dataset.manifest
        self.resolves_images = dataset.manifest.record_schema.name == CONVERSATIONS.name
        self.images: PairImages | None = None  # made when a row first names its pair's image

    def __len__(self) -> int:
        return len(self.plan.order)

    def __getitem__(self, position: int) -> dict[str, Any]:
        for candidate in self._candidates(position):
            shard, row_index = self.rows.locate(self.plan.order[candidate])
            row = self.rows.row(shard, row_index)
            if self.resolves_images and row["image"] is None:
                if self.images is None:
                    keep = 2 * self.plan.window_groups + 2
                    self.images = PairImages(self.data_uri, self.manifest, keep=keep)
                row["image"], row["image_format"] = self.images.image(shard, row["pair_id"])
            try:
                encoded = self.encode(row)
            except Exception as error:  # noqa: BLE001 - the processor's refusal, whatever its type
                self.rejects.add(row["id"], f"processor_error: {type(error).__name__}: {error}")
                continue
            if len(encoded.input_ids) > self.max_seq_len:
                self.rejects.add(
                    row["id"], f"too_long: {len(encoded.input_ids)} > {self.max_seq_len}"
                )
                continue
            return {
                "input_ids": encoded.input_ids,
                "labels": encoded.labels,
                "pixel_values": encoded.pixel_values,
                **encoded.extra,
            }
        raise ValueError(
            f"{MAX_REPLACEMENTS} records in a row were refused near position {position}: "
            f"see {self.rejects.folder}"
        )

    def _candidates(self, position: int) -> list[int]:
        """Position p, then the rest of its batch, then the same slots of the same reader's
        later batches: a replacement comes from rows this reader holds already."""
        size = len(self.plan.order)
        start = position - position % self.batch_size
        same_batch = [
            start + (position - start + k) % self.batch_size for k in range(self.batch_size)
        ]
        stride = self.batch_size * self.plan.readers
        later = [position + k * stride for k in range(1, MAX_REPLACEMENTS)]
        return [p for p in same_batch + later if p < size][:MAX_REPLACEMENTS]
