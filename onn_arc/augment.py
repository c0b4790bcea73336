"""Whole-task augmentations with exact inverses (DESIGN §2).

One `Augmentation` is applied to every grid of a task, demos and test alike: a dihedral map, a permutation of colours (0,
the usual background, fixed unless asked otherwise) and a new order of the train pairs. A random permutation may move
every colour, or only the colours of the task's inputs among themselves (`input_colours`): then a colour that only an
output brings ("fill the holes with yellow") keeps its meaning under every augmentation of the task. Colour and dihedral maps act on
cells and positions respectively, so they commute, and `inverse()` undoes all three exactly. Randomness comes only from
the generator passed to `random`.

Dihedral maps, as numpy operations on an (H, W) array `a` (`transpose first when >= 4, then np.rot90 by index % 4`):

    0  a                      identity
    1  np.rot90(a, 1)         rotate 90° counter-clockwise
    2  np.rot90(a, 2)         rotate 180°
    3  np.rot90(a, 3)         rotate 270° counter-clockwise (90° clockwise)
    4  a.T                    flip about the main diagonal (transpose)
    5  np.flipud(a)           flip top to bottom   (= np.rot90(a.T, 1))
    6  np.rot90(a, 2).T       flip about the anti-diagonal (= np.rot90(a.T, 2))
    7  np.fliplr(a)           flip left to right   (= np.rot90(a.T, 3))
"""

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from onn_arc.data import Grid, Pair, Task, as_array, from_array

N_COLOURS = 10
INVERSE_DIHEDRAL = (0, 3, 2, 1, 4, 5, 6, 7)  # rotations undo each other; the four flips are their own inverses


def dihedral_map(a: np.ndarray, dihedral: int) -> np.ndarray:
    """Dihedral map number `dihedral` (table above) of an (H, W) array of cells or per-cell values."""
    return np.rot90(a.T if dihedral >= 4 else a, dihedral % 4)


def input_colours(task: Task) -> frozenset[int]:
    """The colours of every input grid of `task`, demos and test inputs (never an output)."""
    grids = [p.input for p in task.train + task.test]
    return frozenset(int(c) for g in grids for c in np.unique(as_array(g)))


def _is_permutation(values: tuple[int, ...], n: int) -> bool:
    return sorted(values) == list(range(n))


@dataclass(frozen=True)
class Augmentation:
    dihedral: int  # 0..7, see the module docstring
    colours: tuple[int, ...]  # a permutation of 0..9: new colour = colours[old]
    order: tuple[int, ...]  # a permutation of the train-pair indices: new train[i] = old train[order[i]]

    def __post_init__(self) -> None:
        if not isinstance(self.dihedral, int) or not 0 <= self.dihedral < 8:
            raise ValueError(f"augmentation: dihedral must be 0..7, got {self.dihedral!r}")
        if not _is_permutation(self.colours, N_COLOURS):
            raise ValueError(f"augmentation: colours must be a permutation of 0..9, got {self.colours!r}")
        if not _is_permutation(self.order, len(self.order)):
            raise ValueError(f"augmentation: order must be a permutation of 0..{len(self.order) - 1}, got {self.order!r}")

    @staticmethod
    def identity(n_train: int) -> "Augmentation":
        return Augmentation(0, tuple(range(N_COLOURS)), tuple(range(n_train)))

    @staticmethod
    def random(
        rng: np.random.Generator,
        n_train: int,
        keep_background: bool = True,
        dihedral: bool = True,
        colours: bool = True,
        shuffle: bool = True,
        movable: Collection[int] | None = None,
    ) -> "Augmentation":
        """A random augmentation; each part can be switched off (then it is the identity). `movable`: the colours
        permuted (among themselves), every other colour fixed; None: all ten. Colour 0 stays with `keep_background`."""
        d = int(rng.integers(8)) if dihedral else 0
        if not colours:
            perm = tuple(range(N_COLOURS))
        elif movable is not None:
            moved = sorted(set(movable) - {0} if keep_background else set(movable))
            perm_list = list(range(N_COLOURS))
            for old, new in zip(moved, rng.permutation(moved).tolist(), strict=True):
                perm_list[old] = new
            perm = tuple(perm_list)
        elif keep_background:
            perm = (0, *(1 + rng.permutation(N_COLOURS - 1)).tolist())
        else:
            perm = tuple(rng.permutation(N_COLOURS).tolist())
        order = tuple(rng.permutation(n_train).tolist()) if shuffle else tuple(range(n_train))
        return Augmentation(d, perm, order)

    def inverse(self) -> "Augmentation":
        colours = [0] * N_COLOURS
        for old, new in enumerate(self.colours):
            colours[new] = old
        order = [0] * len(self.order)
        for new, old in enumerate(self.order):
            order[old] = new
        return Augmentation(INVERSE_DIHEDRAL[self.dihedral], tuple(colours), tuple(order))

    def apply_grid(self, g: Grid) -> Grid:
        return from_array(dihedral_map(np.asarray(self.colours)[as_array(g)], self.dihedral))

    def invert_grid(self, g: Grid) -> Grid:
        return self.inverse().apply_grid(g)

    def apply(self, task: Task) -> Task:
        """Every grid mapped, train pairs reordered, test pairs kept in order."""
        if len(self.order) != len(task.train):
            raise ValueError(f"augmentation orders {len(self.order)} train pairs, task {task.id} has {len(task.train)}")
        train = tuple(self.apply_pair(task.train[i]) for i in self.order)
        return task.model_copy(update={"train": train, "test": tuple(self.apply_pair(p) for p in task.test)})

    def invert(self, task: Task) -> Task:
        return self.inverse().apply(task)

    def apply_pair(self, pair: Pair) -> Pair:
        """Both grids of a pair mapped (a missing output stays missing)."""
        output = None if pair.output is None else self.apply_grid(pair.output)
        return Pair(input=self.apply_grid(pair.input), output=output)

    def to_json(self) -> dict:
        return {"dihedral": self.dihedral, "colours": list(self.colours), "order": list(self.order)}

    @staticmethod
    def from_json(d: dict) -> "Augmentation":
        try:
            return Augmentation(int(d["dihedral"]), tuple(map(int, d["colours"])), tuple(map(int, d["order"])))
        except (KeyError, TypeError) as e:
            raise ValueError(f"augmentation: not a recorded augmentation ({type(e).__name__}: {e}): {d!r}") from None
