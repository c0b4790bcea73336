"""Rich renderables: digits without colour, palette with colour, marks, wrapping, predictions, heat-maps."""

import io

import numpy as np
import pytest
from rich.console import Console

from onn_arc import render
from onn_arc.data import Pair, Task


def _console(width: int, colour: bool = False) -> Console:
    if colour:
        return Console(
            record=True, width=width, file=io.StringIO(), force_terminal=True, color_system="truecolor", no_color=False
        )
    return Console(record=True, width=width, file=io.StringIO())


def _text(renderable, width: int = 200) -> str:
    console = _console(width)
    console.print(renderable)
    return console.export_text()


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


GRID = ((1, 2, 3), (4, 5, 6))
TASK = Task(
    id="t1",
    train=(Pair(input=((1, 1), (1, 1)), output=((2, 2), (2, 2))),),
    test=(Pair(input=((3, 3, 3),), output=((9, 9), (9, 8), (9, 9))),),
)


def test_grid_plain_shows_digits_and_size():
    lines = _lines(_text(render.GridView(GRID, "input")))
    assert lines == ["input 2×3", "1 2 3", "4 5 6"]


def test_grid_colour_paints_palette_without_digits():
    console = _console(80, colour=True)
    console.print(render.GridView(GRID))
    styled = console.export_text(styles=True, clear=False)
    assert "48;2;0;116;217" in styled  # colour 1 on #0074D9
    assert "48;2;135;12;37" not in styled  # no 9 in the grid, no maroon
    assert _lines(console.export_text()) == ["2×3", "", ""]  # cells are blank when painted


def test_no_color_on_a_terminal_falls_back_to_digits():
    console = Console(record=True, width=80, file=io.StringIO(), force_terminal=True, color_system="truecolor", no_color=True)
    console.print(render.GridView(GRID))
    assert "1 2 3" in console.export_text()


def test_marks_follow_the_wrong_cells():
    marks = np.array([[False, True, False], [False, False, True]])
    assert _lines(_text(render.GridView(GRID, marks=marks)))[1:] == ["1 2×3", "4 5 6×"]
    with pytest.raises(ValueError, match="marks of shape"):
        render.GridView(GRID, marks=np.zeros((3, 2), bool))


def test_marks_contrast_with_the_cell_colour():
    console = _console(80, colour=True)
    console.print(render.GridView(((4, 9),), marks=np.array([[True, True]])))
    styled = console.export_text(styles=True)
    assert "38;2;0;0;0;48;2;255;220;0m ×" in styled  # black on yellow
    assert "38;2;255;255;255;48;2;135;12;37m ×" in styled  # white on maroon


def _wide_pair() -> Pair:
    grid = tuple(tuple((r + c) % 10 for c in range(15)) for r in range(15))
    return Pair(input=grid, output=grid)


def test_pair_side_by_side_when_wide_stacked_when_narrow():
    rows = [" ".join(str(v) for v in row) for row in _wide_pair().input]
    wide = _lines(_text(render.pair_view("demo 1", _wide_pair()), width=200))
    assert wide[0] == "demo 1"
    assert "input 15×15" in wide[1] and "output 15×15" in wide[1]
    assert any("→" in line for line in wide)
    narrow = _lines(_text(render.pair_view("demo 1", _wide_pair()), width=40))
    assert all(len(line) <= 40 for line in narrow)
    headers = [i for i, line in enumerate(narrow) if "15×15" in line]
    assert len(headers) == 2 and "input" in narrow[headers[0]] and "output" in narrow[headers[1]]
    assert narrow[headers[1] - 1].strip() == "↓"
    assert all(row in narrow for row in rows)  # grid rows are whole, never wrapped


def test_task_view_hides_the_answer_unless_asked():
    hidden = _text(render.task_view(TASK, show_answer=False))
    assert "t1  1 demo, 1 test" in hidden
    assert "demo 1" in hidden and "test 1" in hidden and "input 1×3" in hidden
    assert "hidden" in hidden and "9 8" not in hidden and "3×2" not in hidden
    shown = _text(render.task_view(TASK, show_answer=True))
    assert "output 3×2" in shown and "9 8" in shown and "hidden" not in shown


def test_task_view_without_test_output_says_unknown():
    task = TASK.model_copy(update={"test": (Pair(input=((3,),)),)})
    assert "unknown" in _text(render.task_view(task, show_answer=True))


def test_prediction_view_marks_and_ticks():
    truth = TASK.test[0].output
    wrong = ((9, 9), (9, 9), (9, 9))
    text = _text(render.prediction_view(TASK, 0, [wrong, truth], truth))
    assert "attempt 1 ✗" in text and "attempt 2 ✓" in text
    assert "1 of 6 cells wrong" in text and "exact" in text
    assert "9 9×" in text  # the wrong cell of attempt 1, row 1


def test_prediction_view_shape_mismatch_and_missing_attempt():
    text = _text(render.prediction_view(TASK, 0, [((1, 2),), None], TASK.test[0].output))
    assert "shape 1×2, expected 3×2" in text
    assert "attempt 2 ✗ none given" in text


def test_prediction_view_without_truth_just_shows_attempts():
    text = _text(render.prediction_view(TASK, 0, [((1, 2),), None], None))
    assert "attempt 1 1×2" in text and "1 2" in text and "none" in text
    assert "✓" not in text and "✗" not in text and "output" not in text


def test_task_view_with_predictions_compares_each_test():
    truth = TASK.test[0].output
    text = _text(render.task_view(TASK, show_answer=True, predictions=[(truth, None)]))
    assert "demo 1" in text and "attempt 1 ✓" in text and "attempt 2 ✗ none given" in text
    missing = _text(render.task_view(TASK, show_answer=True, predictions=[]))
    assert "attempt 1 ✗ none given" in missing


def test_heatmap_shades_and_legend():
    lines = _lines(_text(render.heatmap(np.array([[0.0, 0.5, 1.0]]), "confidence")))
    assert lines[0] == "confidence 1×3"
    assert lines[1] == "  ▒▒██"
    assert lines[2] == "0   ░░▒▒▓▓██ 1"


def test_heatmap_colour_ramp_ends():
    console = _console(80, colour=True)
    console.print(render.heatmap(np.array([[0.0, 1.0]])))
    styled = console.export_text(styles=True)
    assert "48;2;68;1;84" in styled and "48;2;253;231;37" in styled  # #440154 and #FDE725


@pytest.mark.parametrize("values", [np.array([[1.5]]), np.array([[np.nan]]), np.zeros((2, 2, 2)), np.zeros((0, 3))])
def test_heatmap_rejects_bad_values(values):
    with pytest.raises(ValueError):
        render.heatmap(values)
