"""sfttui: a Textual app that browses a run directory (reads files only; no torch)."""

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from tui.app import main as _main

    return _main(argv)
