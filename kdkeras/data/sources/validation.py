"""The validation split carved from a training split: stratified by class, seeded,
disjoint from what is trained on, taken after `limit=`. Tuning and every other
choice read it, so that the test split is read once, at the end.

`ValidationSplit(size, seed, subset)` names one part of it: `size` a fraction in
(0, 1) or a count of examples, `subset` "training" (what is trained on) or
"validation". `train_part_limit` keeps a stratified subset of the training part
only (a tuning trial's data): the validation part stays whole. NumPy only.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from kdkeras.data.sources.splits import stratified_positions

#: the two parts of a split with a validation split carved out (Keras' words)
SUBSETS = ("training", "validation")
#: mixed into the run's seed so that the carving draws differ from other seeded draws
_CARVE_TAG = 0x76616C

ACCEPTED = "a fraction in (0, 1) or a count of examples (an int >= 1); 0 or None for no validation split"


def check_validation_size(size) -> float | int | None:
    """`size` as a fraction or a count, None for none (0 or None); a ValueError naming
    the value and what is accepted otherwise."""
    if size is None or (isinstance(size, numbers.Real) and not isinstance(size, bool) and size == 0):
        return None
    if isinstance(size, bool) or not isinstance(size, numbers.Real):
        raise ValueError(f"validation_split={size!r} is not a number; accepted: {ACCEPTED}.")
    if isinstance(size, numbers.Integral):
        if size < 1:
            raise ValueError(f"validation_split={size!r} is negative; accepted: {ACCEPTED}.")
        return int(size)
    if not (0.0 < float(size) < 1.0):
        raise ValueError(f"validation_split={size!r} is not a fraction in (0, 1) nor an int count; "
                         f"accepted: {ACCEPTED}.")
    return float(size)


@dataclasses.dataclass(frozen=True)
class ValidationSplit:
    """One part of a split with a validation split carved out: `size` (a fraction in
    (0, 1) or a count), `seed` (each seed its own split) and `subset`.
    `train_part_limit` keeps only that many examples of the training part, stratified by
    class (`stratified_positions`, the same subset on every call); the validation part
    is the same with or without it, so runs of several training sizes are scored on
    the same examples."""

    size: float | int
    seed: int = 0
    subset: str = "training"
    train_part_limit: int | None = None

    def __post_init__(self):
        size = check_validation_size(self.size)
        if size is None:
            raise ValueError(f"A ValidationSplit needs a size; accepted: {ACCEPTED}.")
        object.__setattr__(self, "size", size)
        if self.subset not in SUBSETS:
            raise ValueError(f"subset={self.subset!r} is not one of {list(SUBSETS)}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"The seed of a validation split must be an int, got {self.seed!r}.")
        cap = self.train_part_limit
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, numbers.Integral) or cap < 1):
            raise ValueError(f"train_part_limit={cap!r}; accepted: None (the whole training part) or an int "
                             ">= 1 (that many training examples, stratified by class).")

    def positions(self, labels, name: str = "", class_names=None) -> np.ndarray:
        """Positions (ascending) in `labels` of this subset's examples."""
        train, validation = carve(labels, self.size, self.seed, name, class_names)
        if self.subset == "validation":
            return validation
        if self.train_part_limit is not None and self.train_part_limit < len(train):
            labels = np.asarray(labels).reshape(-1)
            train = train[stratified_positions(labels[train], int(self.train_part_limit), name)]
        return train

    def spec(self) -> dict:
        """What identifies these examples in a data fingerprint (a teacher cache's): the
        training part's cap only where it applies (the validation part ignores it)."""
        spec = {"validation_split": self.size, "subset": self.subset, "split_seed": int(self.seed)}
        if self.subset == "training" and self.train_part_limit is not None:
            spec["train_part_limit"] = int(self.train_part_limit)
        return spec


def validation_counts(labels, size: float | int, name: str = "", class_names=None) -> dict:
    """Validation examples per class: `size` (a fraction of all, or a count) shared
    among the classes in proportion to their sizes (largest remainders, so the total is
    exactly the count asked, or round(fraction x examples)); a ValueError when the
    count exceeds the data or a class would be left with no validation or no
    training example."""
    labels = np.asarray(labels).reshape(-1)
    size = check_validation_size(size)
    n = len(labels)
    total = size if isinstance(size, int) else int(np.floor(size * n + 0.5))
    where = f" of {name!r}" if name else ""
    if total >= n:
        raise ValueError(f"validation_split={size!r} asks for {total} validation examples but the training "
                         f"data{where} has {n}; accepted: a count below {n} (leaving examples to train on) "
                         "or a fraction in (0, 1).")
    classes, sizes = np.unique(labels, return_counts=True)
    quota = total * sizes / n
    counts = np.floor(quota).astype(int)
    order = np.lexsort((classes, -(quota - counts)))  # largest remainder first, ties by class
    counts[order[: total - counts.sum()]] += 1
    for label, count, members in zip(classes, counts, sizes):
        if 1 <= count <= members - 1:
            continue
        known = class_names is not None and 0 <= int(label) < len(class_names)
        which = f"class {int(label)}" + (f" ({class_names[int(label)]!r})" if known else "")
        lacks = "no validation example" if count < 1 else "no training example"
        raise ValueError(
            f"validation_split={size!r} leaves {which}{where} ({members} examples) with {lacks}: "
            f"{int(count)} of its examples would be validation. Accepted: a fraction in (0, 1) or a count "
            f"that gives every class at least one validation and one training example (for this class "
            f"about {1 / members:.3g} to {(members - 1) / members:.3g} of the data), or more training "
            "examples (--train_limit).")
    return {int(label): int(count) for label, count in zip(classes, counts)}


def carve(labels, size: float | int, seed: int = 0, name: str = "", class_names=None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) positions (each ascending, disjoint, together all of
    `labels`): each class's `validation_counts` share drawn at random, seeded by `seed`."""
    labels = np.asarray(labels).reshape(-1)
    counts = validation_counts(labels, size, name, class_names)
    rng = np.random.default_rng([_CARVE_TAG, int(seed) & 0xFFFFFFFF])
    is_validation = np.zeros(len(labels), bool)
    for label, count in counts.items():
        members = np.flatnonzero(labels == label)
        is_validation[members[rng.permutation(len(members))[:count]]] = True
    return np.flatnonzero(~is_validation), np.flatnonzero(is_validation)
