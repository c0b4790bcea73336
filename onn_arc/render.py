"""Rich renderables for grids, tasks, predictions and heat-maps.

A grid cell is two characters wide. On a colour terminal it is painted in the ARC
web viewer's palette; without colour (NO_COLOR, a pipe, a log file, a captured
console) it shows its digit instead, so the output reads as plain text too. The
second character of a cell is its mark slot: a wrong cell in a diff shows "×"
there (in colour, drawn in black or white, whichever contrasts with the cell).

Several grids in a row (input → output, truth and attempts) sit side by side and
wrap onto the next line where the console is too narrow; a grid is never broken.
"""

from collections.abc import Sequence

import numpy as np
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from onn_arc.data import Grid, Pair, Task, as_array

PALETTE = (  # colour index -> the ARC web viewer's background colour
    "#000000",  # 0 black
    "#0074D9",  # 1 blue
    "#FF4136",  # 2 red
    "#2ECC40",  # 3 green
    "#FFDC00",  # 4 yellow
    "#AAAAAA",  # 5 grey
    "#F012BE",  # 6 magenta
    "#FF851B",  # 7 orange
    "#7FDBFF",  # 8 light blue
    "#870C25",  # 9 maroon
)
WRONG = "×"  # marks a cell that differs from the truth
HEAT_STOPS = ("#440154", "#3B528B", "#21918C", "#5EC962", "#FDE725")  # 0 -> 1, viridis
SHADES = " ░▒▓█"  # 0 -> 1 without colour, one per fifth of the scale

ARROW = (" → ", "↓")  # a separator: (between items on one line, on its own line when wrapped)
GAP = ("   ", "")


def _colour(console: Console, options: ConsoleOptions) -> bool:
    """Paint cells, or write digits: colour only on a terminal that has it and wants it."""
    return options.is_terminal and console.color_system is not None and not console.no_color


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _ink(background: str) -> str:
    """Black or white, whichever reads better on `background`."""
    r, g, b = _hex_rgb(background)
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 128 else "#FFFFFF"


_CELL_STYLES = tuple(Style(bgcolor=c, color=_ink(c), bold=True) for c in PALETTE)  # a mark is drawn in the ink colour


def size(grid: Grid) -> str:
    """'H×W'."""
    return f"{len(grid)}×{len(grid[0])}"


def _header(title: str | Text, shape: tuple[int, int]) -> Text:
    header = Text(title, style="bold") if isinstance(title, str) else title.copy()
    if header.plain:
        header.append(" ")
    header.append(f"{shape[0]}×{shape[1]}", style="dim")
    return header


class GridView:
    """One grid under a header "title H×W"; `marks` (bool, same shape) puts "×" on chosen cells."""

    def __init__(self, grid: Grid, title: str | Text = "", marks: np.ndarray | None = None) -> None:
        self.cells = as_array(grid)  # (H, W)
        self.marks = np.zeros(self.cells.shape, bool) if marks is None else np.asarray(marks, bool)
        if self.marks.shape != self.cells.shape:
            raise ValueError(f"marks of shape {self.marks.shape} for a grid of shape {self.cells.shape}")
        self.header = _header(title, self.cells.shape)

    def _width(self) -> int:
        return max(2 * self.cells.shape[1], self.header.cell_len)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(self._width(), self._width())

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.header
        colour = _colour(console, options)
        for row, marks in zip(self.cells.tolist(), self.marks.tolist()):
            line = Text(no_wrap=True, overflow="crop")
            for value, marked in zip(row, marks):
                mark = WRONG if marked else " "
                if colour:
                    line.append(" " + mark, _CELL_STYLES[value])
                else:
                    line.append(f"{value}{mark}")
            yield line


class _Heatmap:
    """Values in [0, 1] (a 2-D array), one shaded cell each, with a legend of the scale."""

    def __init__(self, values: np.ndarray, title: str = "") -> None:
        self.values = np.asarray(values, dtype=np.float64)  # (H, W)
        if self.values.ndim != 2 or 0 in self.values.shape:
            raise ValueError(f"heatmap needs a non-empty 2-D array, got shape {self.values.shape}")
        if not np.all((self.values >= 0) & (self.values <= 1)):  # also rejects NaN
            raise ValueError(f"heatmap values must lie in [0, 1], got min {self.values.min()} max {self.values.max()}")
        self.header = _header(title, self.values.shape)

    def _width(self) -> int:
        return max(2 * self.values.shape[1], self.header.cell_len, len(self._legend(False)))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(self._width(), self._width())

    def _cell(self, value: float, colour: bool) -> Text:
        if colour:
            return Text("  ", Style(bgcolor=_heat(value)))
        return Text(SHADES[min(int(value * len(SHADES)), len(SHADES) - 1)] * 2)

    def _legend(self, colour: bool) -> Text:
        steps = (np.arange(len(SHADES)) + 0.5) / len(SHADES)  # one sample per shade
        return Text("0 ", style="dim").append_text(Text.assemble(*(self._cell(v, colour) for v in steps))).append(" 1", "dim")

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        colour = _colour(console, options)
        yield self.header
        for row in self.values.tolist():
            yield Text.assemble(*(self._cell(v, colour) for v in row), no_wrap=True, overflow="crop")
        yield self._legend(colour)


def _heat(value: float) -> str:
    """The colour at `value` on the HEAT_STOPS ramp, linearly interpolated."""
    x = value * (len(HEAT_STOPS) - 1)
    i = min(int(x), len(HEAT_STOPS) - 2)
    lo, hi = np.array(_hex_rgb(HEAT_STOPS[i])), np.array(_hex_rgb(HEAT_STOPS[i + 1]))
    r, g, b = np.rint(lo + (x - i) * (hi - lo)).astype(int)
    return f"#{r:02X}{g:02X}{b:02X}"


def heatmap(values: np.ndarray, title: str = "") -> _Heatmap:
    """A heat-map of values in [0, 1] (e.g. confidence or an SBL activation rate per cell)."""
    return _Heatmap(values, title)


class Flow:
    """Items left to right with a separator between each two; wraps to a new line where the next item does not fit.

    `seps[i]` goes between items i and i + 1: its first string when they share a line (drawn at the
    middle row of the shorter of the two), its second on a line of its own when the row wraps there.
    """

    def __init__(self, items: Sequence[RenderableType], seps: Sequence[tuple[str, str]]) -> None:
        if len(seps) != max(len(items) - 1, 0):
            raise ValueError(f"{len(items)} items need {max(len(items) - 1, 0)} separators, got {len(seps)}")
        self.items, self.seps = list(items), list(seps)

    def _lines(self, widths: list[int], max_width: int) -> list[list[int]]:
        """Greedy: item indices per output line."""
        lines: list[list[int]] = []
        used = 0
        for i, width in enumerate(widths):
            extra = width + len(self.seps[i - 1][0]) if i else width
            if lines and used + extra <= max_width:
                lines[-1].append(i)
                used += extra
            else:
                lines.append([i])
                used = width
        return lines

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widths = [Measurement.get(console, options, item).maximum for item in self.items]
        return Measurement(max(widths, default=0), sum(widths) + sum(len(s[0]) for s in self.seps))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = [min(Measurement.get(console, options, item).maximum, options.max_width) for item in self.items]
        for n, line in enumerate(self._lines(widths, options.max_width)):
            if n:
                yield Text(" " + self.seps[line[0] - 1][1])
            blocks = [console.render_lines(self.items[i], options.update(width=widths[i], height=None), pad=True) for i in line]
            height = max(len(b) for b in blocks)
            for row in range(height):
                for k, (i, block) in enumerate(zip(line, blocks)):
                    if k:
                        sep = self.seps[i - 1][0]
                        middle = min(len(blocks[k - 1]), len(block)) // 2
                        yield Segment(sep if row == middle else " " * len(sep))
                    yield from block[row] if row < len(block) else [Segment(" " * widths[i])]
                yield Segment.line()


def _placeholder(title: str, note: str) -> Text:
    return Text.assemble((title, "bold"), "\n", (note, "dim italic"))


def pair_view(title: str, pair: Pair, show_output: bool = True) -> Group:
    """'demo 1' over input → output; the output is replaced by a note when hidden or unknown."""
    if pair.output is None:
        right: RenderableType = _placeholder("output", "unknown")
    elif not show_output:
        right = _placeholder("output", "hidden")
    else:
        right = GridView(pair.output, "output")
    return Group(Text(title, style="bold underline"), Flow([GridView(pair.input, "input"), right], [ARROW]))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def task_view(task: Task, show_answer: bool, predictions: Sequence[Sequence[Grid | None]] | None = None) -> Group:
    """The whole task: every demo, then every test pair (its output only if `show_answer`).

    With `predictions` (attempts per test pair, in order; missing entries count as no attempts) each test pair
    is drawn by `prediction_view`, compared with its output when `show_answer`.
    """
    parts: list[RenderableType] = [
        Text.assemble((task.id, "bold"), f"  {_count(len(task.train), 'demo')}, {_count(len(task.test), 'test')}")
    ]
    for i, pair in enumerate(task.train):
        parts += [Text(), pair_view(f"demo {i + 1}", pair)]
    for i, pair in enumerate(task.test):
        if predictions is None:
            view = pair_view(f"test {i + 1}", pair, show_output=show_answer)
        else:
            attempts = predictions[i] if i < len(predictions) else (None, None)
            view = prediction_view(task, i, attempts, pair.output if show_answer else None)
        parts += [Text(), view]
    return Group(*parts)


def _verdict(attempt: Grid, truth: Grid) -> tuple[bool, str, np.ndarray | None]:
    """(exact, a few words, wrong-cell mask or None when the shape differs)."""
    a, t = as_array(attempt), as_array(truth)
    if a.shape != t.shape:
        return False, f"shape {size(attempt)}, expected {size(truth)}", None
    wrong = a != t
    n = int(wrong.sum())
    return n == 0, "exact" if n == 0 else f"{n} of {wrong.size} cells wrong", wrong


def prediction_view(task: Task, test_index: int, attempts: Sequence[Grid | None], truth: Grid | None) -> Group:
    """Test pair `test_index`: its input, the true output (when known) and each attempt.

    With a truth every attempt gets ✓/✗ in its header, wrong cells marked "×", and a line below
    says how it differs (cells wrong, or the shape); without one the attempts are shown as they are.
    """
    items: list[RenderableType] = [GridView(task.test[test_index].input, "input")]
    if truth is not None:
        items.append(GridView(truth, "output"))
    notes: list[Text] = []
    for k, attempt in enumerate(attempts, start=1):
        name = f"attempt {k}"
        if attempt is None:
            items.append(_placeholder(name, "none"))
            if truth is not None:
                notes.append(Text.assemble((f"{name} ✗", "red"), " none given"))
            continue
        if truth is None:
            items.append(GridView(attempt, name))
            continue
        exact, words, wrong = _verdict(attempt, truth)
        tick = Text(f"{name} ✓", "bold green") if exact else Text(f"{name} ✗", "bold red")
        items.append(GridView(attempt, tick, marks=wrong))
        notes.append(tick.copy().append(f" {words}", style="not bold"))
    seps = [ARROW] + [GAP] * (len(items) - 2)
    parts: list[RenderableType] = [Text(f"test {test_index + 1}", style="bold underline"), Flow(items, seps)]
    if notes:
        parts.append(Text("  ·  ").join(notes))
    return Group(*parts)
