"""A virtualised table: only the visible lines are rendered, rows live in a plain Python list.

Textual's DataTable builds per-row state up front (13 s for 100k rows on this machine); this one
renders `rows[scroll_y + y]` on demand, so filtering or sorting 100k findings is a list operation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip


@dataclass(frozen=True)
class Column:
    title: str
    width: int  # 0 = take the remaining width


Cell = str | Text


class Table(ScrollView, can_focus=True):
    """Rows of cells (str or rich Text) under a fixed header line; a cursor row; Enter selects."""

    DEFAULT_CSS = """
    Table { height: 1fr; }
    Table > .table--header { text-style: bold; background: $panel; }
    Table > .table--cursor { background: $accent 40%; }
    Table:focus > .table--cursor { background: $accent; color: $text; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"table--header", "table--cursor"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "move(-1)", "up", show=False),
        Binding("down,j", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "jump(0)", "first", show=False),
        Binding("end", "jump(-1)", "last", show=False),
        Binding("enter", "select", "open", show=True),
    ]
    cursor: reactive[int] = reactive(0)

    class _RowMessage(Message):
        def __init__(self, table: Table, index: int) -> None:
            super().__init__()
            self.table, self.index = table, index

        @property
        def control(self) -> Table:
            return self.table

    class Highlighted(_RowMessage):
        """The cursor moved to row `index`."""

    class Selected(_RowMessage):
        """Enter on row `index`."""

    def __init__(
        self,
        columns: Sequence[Column],
        *,
        row_cells: Callable[[Any], Sequence[Cell]] = tuple,
        empty: str = "(nothing to show)",
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.columns = list(columns)
        self.rows: Sequence[Any] = []
        self.row_cells = row_cells
        self.empty = empty
        self.sort_note = ""

    # -- data ---------------------------------------------------------------------------------

    def set_rows(self, rows: Sequence[Any], *, keep_cursor: bool = False) -> None:
        self.rows = rows
        self.virtual_size = Size(self._total_width(), len(rows) + 1)
        self.set_reactive(Table.cursor, min(self.cursor, max(len(rows) - 1, 0)) if keep_cursor else 0)
        if not keep_cursor:
            self.scroll_to(y=0, animate=False)
        self.refresh()
        if rows:
            self.post_message(self.Highlighted(self, self.cursor))

    @property
    def current(self) -> Any | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def _total_width(self) -> int:
        return sum(c.width or 40 for c in self.columns) + len(self.columns)

    # -- movement -----------------------------------------------------------------------------

    def watch_cursor(self, old: int, new: int) -> None:
        self._scroll_to_cursor()
        self.refresh()
        if self.rows:
            self.post_message(self.Highlighted(self, new))

    def _scroll_to_cursor(self) -> None:
        body = max(self.size.height - 1, 1)
        y = self.scroll_offset.y
        if self.cursor < y:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= y + body:
            self.scroll_to(y=self.cursor - body + 1, animate=False)

    def move_to(self, index: int) -> None:
        if self.rows:
            self.cursor = max(0, min(index, len(self.rows) - 1))

    def action_move(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self.move_to(self.cursor + direction * max(self.size.height - 2, 1))

    def action_jump(self, index: int) -> None:
        self.move_to(index if index >= 0 else len(self.rows) - 1)

    def action_select(self) -> None:
        if self.rows:
            self.post_message(self.Selected(self, self.cursor))

    def on_click(self, event: Any) -> None:
        row = self.scroll_offset.y + event.y - 1
        if event.y >= 1 and 0 <= row < len(self.rows):
            if row == self.cursor and event.chain >= 2:
                self.action_select()
            self.cursor = row

    # -- rendering ----------------------------------------------------------------------------

    def _widths(self, width: int) -> list[int]:
        fixed = sum(c.width for c in self.columns if c.width) + len(self.columns) - 1
        flex = [c for c in self.columns if not c.width]
        rest = max(width - fixed, 10 * len(flex))
        return [c.width or rest // max(len(flex), 1) for c in self.columns]

    def _line(self, cells: Sequence[Cell], widths: list[int], base: Style) -> list[Segment]:
        segs: list[Segment] = []
        for k, (cell, w) in enumerate(zip(cells, widths)):
            text = cell if isinstance(cell, Text) else Text(str(cell).replace("\n", " "))
            text = text.copy()
            text.truncate(w, overflow="ellipsis", pad=True)
            segs += [
                Segment(s.text, base + s.style if s.style else base)
                for s in text.render(self.app.console)
                if s.text != "\n"
            ]
            if k < len(widths) - 1:
                segs.append(Segment(" ", base))
        return segs

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        widths = self._widths(width)
        if y == 0:
            style = base + self.get_component_rich_style("table--header")
            titles = [c.title for c in self.columns]
            if self.sort_note:
                titles[-1] = f"{titles[-1]}  {self.sort_note}"
            return Strip(self._line(titles, widths, style)).extend_cell_length(width, style).crop(0, width)
        i = self.scroll_offset.y + y - 1
        if not self.rows:
            if y == 1:
                return Strip([Segment(self.empty[:width], base + Style(dim=True))]).extend_cell_length(width, base)
            return Strip.blank(width, base)
        if i >= len(self.rows):
            return Strip.blank(width, base)
        style = base + self.get_component_rich_style("table--cursor") if i == self.cursor else base
        cells = self.row_cells(self.rows[i])
        return Strip(self._line(cells, widths, style)).extend_cell_length(width, style).crop(0, width)

    def on_resize(self) -> None:
        self.virtual_size = Size(self._total_width(), len(self.rows) + 1)
