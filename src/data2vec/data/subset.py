"""Fewer labels: the low-resource fine-tuning setting.

Pretraining earns its keep when labels are scarce (wav2vec 2.0 and data2vec report speech recognition from
10 minutes, 1 hour and 10 hours of transcribed audio), so `finetune.train_examples=N` trains on N labelled
examples of the training split. They are drawn in equal shares per class, because a plain random draw of a
few dozen examples can leave a class with none and then measures luck, not the features. The draw depends on
the seed alone, so the pretrained run and its random-init baseline see the same examples.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence

from data2vec.errors import Data2VecError


def balanced_subset(labels: Sequence[Hashable] | None, total: int, count: int, seed: int, where: str) -> list[int]:
    """Sorted indices of `count` of `total` examples. With `labels` (one class per example: index or name), every class
    gives `count // classes` (one more for the first `count % classes` classes in a seeded order); a class
    with too few gives all it has and the others fill up. Without labels (CTC): a seeded random draw."""
    if count < 0:
        raise Data2VecError(f"finetune.train_examples={count} is negative; give a number of examples for "
                            f"'{where}', or 0 for all of them")
    if count > total:
        raise Data2VecError(f"finetune.train_examples={count} but the training data '{where}' has {total} "
                            "examples; ask for fewer, or 0 for all of them")
    rng = random.Random(seed)
    if labels is None:
        return sorted(rng.sample(range(total), count))
    by_class: dict[Hashable, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    pools = [by_class[c] for c in sorted(by_class, key=str)]  # an order that does not depend on the file's
    for pool in pools:
        rng.shuffle(pool)
    order = list(range(len(pools)))
    rng.shuffle(order)  # which classes get the remainder
    if count < len(pools):
        raise Data2VecError(f"finetune.train_examples={count} is fewer than the {len(pools)} classes of "
                            f"'{where}'; give at least one example per class")
    taken = [0] * len(pools)
    left = count
    while left:  # round-robin over the classes that still have examples
        for c in order:
            if left and taken[c] < len(pools[c]):
                taken[c] += 1
                left -= 1
    return sorted(i for c, pool in enumerate(pools) for i in pool[:taken[c]])
