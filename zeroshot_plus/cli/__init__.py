"""The `zeroshot-plus` command line: a thin layer over the library."""

from .main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
