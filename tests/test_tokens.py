import numpy as np
import pytest

from onn_arc import tokens as tk
from onn_arc.data import Pair, load_split
from onn_arc.errors import GridError, TaskError


def _output_grid_of(seq: tk.Sequence) -> list[int]:
    """Tokens of the output grid (cells and row ends) in `seq`, and the EOS that closes it."""
    return seq.tokens[seq.roles == tk.OUTPUT].tolist() + [seq.tokens[-1]]


@pytest.mark.parametrize("split", ["arc1-train", "arc1-eval"])
def test_round_trip_every_bundled_pair(split):
    for task in load_split(split):
        for pair in (*task.train, *task.test):
            seq = tk.encode_pair(pair)
            assert tk.decode_grid(_output_grid_of(seq)) == pair.output and len(seq) <= tk.pair_room(pair)


def test_prompt_stops_after_out_marker_and_next_coordinate():
    task = load_split("arc1-train")[0]
    prompt = tk.encode_pair(Pair(input=task.test[0].input), answer=False)
    assert prompt.tokens[-1] == tk.OUT and not prompt.targets[-1]
    assert tk.next_coordinate([]) == (0, 0)
    assert tk.next_coordinate([1, 2, tk.ROW, 3]) == (1, 1)


@pytest.mark.parametrize(
    "stream, reason",
    [
        ([1, 2, tk.ROW, 3, tk.ROW], "row 1 has 1 cells, row 0 has 2"),
        ([1, 2], "not closed"),
        ([tk.ROW], "row 0 is empty"),
        ([tk.EOS], "no cells"),
        ([1] * 31 + [tk.ROW], "more than 30 cells"),
        ([1, tk.ROW] * 31, "more than 30 rows"),
    ],
)
def test_decode_rejects_bad_grids(stream, reason):
    with pytest.raises(GridError, match=reason):
        tk.decode_grid(stream)


def test_decode_stops_at_closer():
    assert tk.decode_grid([1, 2, tk.ROW, 3, 4, tk.ROW, tk.IN, 9, 9]) == ((1, 2), (3, 4))


def test_collate_pads_and_masks():
    task = load_split("arc1-train")[0]
    a, b = tk.encode_pair(task.train[0], task=3), tk.encode_pair(Pair(input=task.test[0].input), task=5, answer=False)
    batch = tk.collate([a, b])
    assert batch.tokens.shape == (2, len(a)) and len(b) < len(a)
    assert (batch.tokens[1, len(b) :] == tk.PAD).all() and not batch.targets[1, len(b) :].any()
    assert batch.pos[1, : len(b)].tolist() == b.pos.tolist() and batch.task.tolist() == [3, 5]


PAIR = Pair(input=((1, 2),), output=((3,), (4,)))


def test_pair_layout_planes_and_targets():
    seq = tk.encode_pair(PAIR, task=7)
    B, E, I, O, R = tk.BOS, tk.EOS, tk.IN, tk.OUT, tk.ROW
    assert seq.tokens.tolist() == [B, I, 1, 2, R, O, 3, R, 4, R, E]
    assert seq.rows.tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert seq.cols.tolist() == [0, 0, 0, 1, 2, 0, 0, 1, 0, 1, 0]
    assert seq.pos.tolist() == [0, 1, 2, 2, 2, 3, 4, 4, 4, 4, 5]  # the planes: no sequence index
    assert seq.targets.astype(int).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert seq.task == 7
    with_inputs = tk.encode_pair(PAIR, input_loss=True)
    assert with_inputs.targets.astype(int).tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]  # input cells, ends, OUT too


def test_pair_output_cells_line_up_with_input_cells():
    pair = Pair(input=((1, 2, 3), (4, 5, 6)), output=((7, 8, 9), (0, 1, 2)))
    seq = tk.encode_pair(pair)
    cells_in, cells_out = seq.roles == tk.INPUT, seq.roles == tk.OUTPUT
    assert (seq.rows[cells_in] == seq.rows[cells_out]).all() and (seq.cols[cells_in] == seq.cols[cells_out]).all()
    assert set(seq.pos[cells_in]) == {tk.INPUT_PLANE} and set(seq.pos[cells_out]) == {tk.OUTPUT_PLANE}


def test_pair_prompt_and_test_input_variants():
    prompt = tk.encode_pair(Pair(input=PAIR.input), answer=False)
    assert prompt.tokens.tolist() == [tk.BOS, tk.IN, 1, 2, tk.ROW, tk.OUT] and not prompt.targets.any()
    generated = [3, tk.ROW]
    assert tk.next_position(generated) == (1, 0, tk.OUTPUT_PLANE)
    inputs_only = tk.encode_pair(Pair(input=PAIR.input), answer=False, input_loss=True)  # a test input, no output
    assert inputs_only.targets.astype(int).tolist() == [0, 0, 1, 1, 1, 1]
    with pytest.raises(TaskError, match="no output"):
        tk.encode_pair(Pair(input=PAIR.input))
    with pytest.raises(TaskError, match="needs 11 tokens"):
        tk.encode_pair(PAIR, max_len=10)


def test_grid_room_bounds_every_orientation():
    grid = ((1, 2, 3),)
    assert tk.grid_room(grid) == max(tk.grid_length(grid), tk.grid_length(((1,), (2,), (3,)))) == 6
