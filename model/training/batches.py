"""The batches training draws: slices of every training series (the paper's "slice" objective), or
series in class turn whose most abnormal slices the network itself picks (the "mil" objective, see
model.training.train)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from model.inference.network import WeaklySupervisedNet, mixed_precision
from model.inference.series_rule import abnormality

if TYPE_CHECKING:
    from model.training.train import SeriesSlices, TrainConfig


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


class _SliceIndex:
    """All slices of a list of series, addressed by one flat index without copying the arrays."""

    def __init__(self, series: Sequence[SeriesSlices], classes: Sequence[str]) -> None:
        self.series = list(series)
        pairs: list[tuple[int, int]] = []
        labels: list[int] = []
        for si, s in enumerate(self.series):
            if s.label not in classes:
                raise ValueError(f"series {s.series_id}: label {s.label!r} not in {tuple(classes)}")
            y = list(classes).index(s.label)
            for k in range(s.slices.shape[0]):
                pairs.append((si, k))
                labels.append(y)
        self.pairs = pairs
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.stack(
            [np.asarray(self.series[self.pairs[i][0]].slices[self.pairs[i][1]], dtype=np.float32) for i in indices]
        )
        return torch.from_numpy(x), torch.from_numpy(self.labels[np.asarray(indices)])


class _SeriesBatches:
    """Batches of series for the "mil" objective: the classes in turn, each class's series in a
    shuffled order, reshuffled when used up."""

    def __init__(self, series: Sequence[SeriesSlices], classes: Sequence[str], rng: np.random.Generator) -> None:
        self.series = list(series)
        self.rng = rng
        self.by_class: list[list[int]] = []
        for name in classes:
            members = [i for i, s in enumerate(self.series) if s.label == name]
            if members:
                self.by_class.append(members)
        unknown = sorted({s.label for s in self.series} - set(classes))
        if unknown:
            raise ValueError(f"series labelled {unknown}, not among the classes {tuple(classes)}")
        self.queues: list[list[int]] = [[] for _ in self.by_class]
        self.turn = 0
        self.labels = np.asarray([list(classes).index(s.label) for s in self.series], dtype=np.int64)

    def next(self, size: int) -> list[int]:
        out = []
        for _ in range(size):
            c = self.turn % len(self.by_class)
            self.turn += 1
            if not self.queues[c]:
                self.queues[c] = [int(i) for i in self.rng.permutation(self.by_class[c])]
            out.append(self.queues[c].pop())
        return out


def _mil_batch(
    network: WeaklySupervisedNet,
    series: Sequence[SeriesSlices],
    chosen: Sequence[int],
    config: TrainConfig,
    classes: Sequence[str],
    rng: np.random.Generator,
    device: torch.device,
    memory: dict[int, np.ndarray] | None = None,
) -> torch.Tensor:
    """The "mil" objective's input: per chosen series, the ``mil_k`` most abnormal of
    ``mil_candidates`` lung slices, as (series * k, 1, H, W), scored in one eval pass. The
    candidates are random, except that with ``memory`` (series index -> slice indices, updated here)
    and ``config.mil_memory`` the series' most abnormal slices at its previous visit are among them:
    a lesion on two slices of a hundred is in 16 random candidates a third of the time, and a bag
    without it teaches that lesion-free slices carry the series' label."""
    picks, candidates = [], []
    for i in chosen:
        n = series[i].slices.shape[0]
        size = min(n, config.mil_candidates)
        kept = memory.get(i) if memory is not None and config.mil_memory else None
        if kept is None or kept.size == 0:
            cand = np.sort(rng.choice(n, size=size, replace=False))
        else:
            fresh = rng.choice(np.setdiff1d(np.arange(n), kept), size=size - kept.size, replace=False)
            cand = np.sort(np.concatenate([kept, fresh]))
        candidates.append(cand)
        picks.append(np.asarray(series[i].slices[cand], dtype=np.float32))
    sizes = [len(p) for p in picks]
    x = torch.from_numpy(np.concatenate(picks))
    network.eval()
    with torch.no_grad(), mixed_precision(device):
        score = abnormality(network(to_device(x, device)).mean_logits.float().cpu().numpy(), classes)
    out, start = [], 0
    for i, cand, size in zip(chosen, candidates, sizes):
        order = np.argsort(-score[start : start + size], kind="stable")
        top = order[np.arange(config.mil_k) % size]  # a series with fewer lung slices repeats its best
        out.append(x[start + top])
        if memory is not None and config.mil_memory:
            memory[int(i)] = cand[order[: config.mil_memory]]
        start += size
    return torch.cat(out)


def batch_stream(
    train_series: Sequence[SeriesSlices], config: TrainConfig, network: WeaklySupervisedNet, rng: np.random.Generator
) -> tuple[np.ndarray, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The labels of the training data (for the class balance) and an endless stream of batches."""
    classes, device = tuple(config.classes), torch.device(config.device)
    if config.objective == "mil":
        batches = _SeriesBatches(train_series, classes, rng)
        if len(batches.series) < 1:
            raise ValueError("no training series")

        memory: dict[int, np.ndarray] = {}

        def series_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            while True:
                chosen = batches.next(config.batch_size)
                x = _mil_batch(network, batches.series, chosen, config, classes, rng, device, memory)
                yield x, torch.from_numpy(batches.labels[np.asarray(chosen)])

        return batches.labels, series_batches()
    data = _SliceIndex(train_series, classes)
    if len(data) < config.batch_size:
        raise ValueError(f"{len(data)} training slices, fewer than one batch of {config.batch_size}")

    def slice_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = rng.permutation(len(data))
            for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
                yield data.batch(order[start : start + config.batch_size])

    return data.labels, slice_batches()
