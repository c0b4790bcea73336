"""Augmentations: exact inverses on random tasks, the documented numpy maps, and seeded randomness."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onn_arc.augment import Augmentation, input_colours
from onn_arc.config import AugmentConfig
from onn_arc.data import Pair, Task, as_array, from_array

FAST = settings(max_examples=60, deadline=None)  # per test, so no global hypothesis profile is changed

# The documented map for each dihedral index, written independently of the implementation.
NUMPY_DIHEDRAL = [
    lambda a: a,
    lambda a: np.rot90(a, 1),
    lambda a: np.rot90(a, 2),
    lambda a: np.rot90(a, 3),
    lambda a: a.T,
    lambda a: np.flipud(a),
    lambda a: np.rot90(a, 2).T,
    lambda a: np.fliplr(a),
]


@st.composite
def grids(draw, max_side: int = 6):
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    rows = st.lists(st.integers(0, 9), min_size=w, max_size=w)
    return tuple(tuple(r) for r in draw(st.lists(rows, min_size=h, max_size=h)))


@st.composite
def tasks(draw):
    train = draw(st.lists(st.builds(Pair, input=grids(), output=grids()), min_size=1, max_size=4))
    test = draw(st.lists(st.builds(Pair, input=grids(), output=st.none() | grids()), min_size=1, max_size=2))
    return Task(id="t", train=tuple(train), test=tuple(test))


@st.composite
def task_and_augmentation(draw):
    task = draw(tasks())
    aug = Augmentation(
        dihedral=draw(st.integers(0, 7)),
        colours=tuple(draw(st.permutations(range(10)))),
        order=tuple(draw(st.permutations(range(len(task.train))))),
    )
    return task, aug


@FAST
@given(task_and_augmentation())
def test_invert_undoes_apply(case):
    task, aug = case
    augmented = aug.apply(task)
    assert aug.invert(augmented) == task
    assert aug.inverse().inverse() == aug


@FAST
@given(task_and_augmentation())
def test_apply_maps_every_grid_and_reorders_only_train(case):
    task, aug = case
    augmented = aug.apply(task)
    assert augmented.id == task.id
    assert [p.input for p in augmented.train] == [aug.apply_grid(task.train[i].input) for i in aug.order]
    assert [p.output for p in augmented.train] == [aug.apply_grid(task.train[i].output) for i in aug.order]
    assert [p.input for p in augmented.test] == [aug.apply_grid(p.input) for p in task.test]
    assert [p.output is None for p in augmented.test] == [p.output is None for p in task.test]


@FAST
@given(grids(), st.integers(0, 7), st.permutations(range(10)))
def test_apply_grid_matches_the_documented_numpy_map(grid, dihedral, colours):
    aug = Augmentation(dihedral, tuple(colours), ())
    expected = NUMPY_DIHEDRAL[dihedral](np.asarray(colours)[as_array(grid)])
    assert aug.apply_grid(grid) == from_array(np.ascontiguousarray(expected))
    assert aug.invert_grid(aug.apply_grid(grid)) == grid


def test_the_eight_dihedral_maps_are_distinct_and_a_group():
    grid = ((1, 2, 3), (4, 5, 6))  # no symmetry, so every map gives a different grid
    images = [Augmentation(d, tuple(range(10)), ()).apply_grid(grid) for d in range(8)]
    assert len(set(images)) == 8
    assert images[0] == grid
    assert images[4] == ((1, 4), (2, 5), (3, 6))
    assert images[7] == ((3, 2, 1), (6, 5, 4))
    for d in range(8):  # applying any map twice is again one of the eight
        twice = Augmentation(d, tuple(range(10)), ()).apply_grid(images[d])
        assert twice in images


def test_identity_changes_nothing():
    task = Task(id="t", train=(Pair(input=((1, 2),), output=((3,),)),) * 2, test=(Pair(input=((4,),)),))
    assert Augmentation.identity(2).apply(task) == task


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_random_keeps_background_by_default_and_is_seeded(seed, n_train):
    aug = Augmentation.random(np.random.default_rng(seed), n_train)
    assert aug.colours[0] == 0
    assert sorted(aug.order) == list(range(n_train))
    assert Augmentation.random(np.random.default_rng(seed), n_train) == aug


def test_random_options():
    rng = np.random.default_rng(0)
    plain = Augmentation.random(rng, 5, dihedral=False, colours=False, shuffle=False)
    assert plain == Augmentation.identity(5)
    moved = [Augmentation.random(rng, 3, keep_background=False).colours[0] for _ in range(50)]
    assert len(set(moved)) > 1  # background takes part in the permutation
    assert len({Augmentation.random(rng, 3).dihedral for _ in range(80)}) == 8


@FAST
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_input_scope_moves_only_input_colours_among_themselves(seed, keep_background):
    # inputs hold 0, 1, 2, 5; outputs bring 4 ("fill with yellow"): 4 must never move under the task's augmentations
    task = Task(
        id="t",
        train=(Pair(input=((0, 1), (2, 0)), output=((4, 4), (2, 1))),) * 2,
        test=(Pair(input=((5, 1),)),),
    )
    inputs = input_colours(task)
    assert inputs == {0, 1, 2, 5}
    cfg = AugmentConfig(colour_scope="inputs", keep_background=keep_background)
    aug = cfg.draw(np.random.default_rng(seed), 2, inputs)
    moved = {c for c in range(10) if aug.colours[c] != c}
    assert moved <= (inputs - {0} if keep_background else inputs)
    assert {aug.colours[c] for c in inputs} == inputs  # input colours map onto input colours
    assert aug.colours[4] == 4


def test_input_scope_permutes_when_it_can():
    rng = np.random.default_rng(0)
    cfg = AugmentConfig(colour_scope="inputs")
    maps = {cfg.draw(rng, 1, frozenset({0, 3, 7, 8})).colours for _ in range(60)}
    assert len(maps) == 6  # all 3! orders of 3, 7, 8 (0 is the background)
    assert AugmentConfig().draw(np.random.default_rng(0), 1, frozenset({0, 3})) == Augmentation.random(
        np.random.default_rng(0), 1
    )  # scope "all" draws exactly as before


def test_json_round_trip():
    aug = Augmentation.random(np.random.default_rng(1), 4)
    d = aug.to_json()
    assert Augmentation.from_json(json.loads(json.dumps(d))) == aug
    assert all(type(x) is int for x in (d["dihedral"], *d["colours"], *d["order"]))


@pytest.mark.parametrize(
    "fields",
    [
        {"dihedral": 8, "colours": list(range(10)), "order": [0]},
        {"dihedral": 0, "colours": [0] * 10, "order": [0]},
        {"dihedral": 0, "colours": list(range(10)), "order": [1, 1]},
        {"dihedral": 0, "colours": list(range(10))},
    ],
)
def test_invalid_augmentations_are_refused(fields):
    with pytest.raises(ValueError, match="augmentation"):
        Augmentation.from_json(fields)


def test_order_must_match_the_task():
    task = Task(id="t", train=(Pair(input=((1,),), output=((1,),)),), test=(Pair(input=((1,),)),))
    with pytest.raises(ValueError, match="orders 2 train pairs, task t has 1"):
        Augmentation.identity(2).apply(task)
