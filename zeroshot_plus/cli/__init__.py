"""The `zeroshot-plus` command line: a thin layer over the library."""

from .main import main, run
from .parser import build_parser

__all__ = ["build_parser", "main", "run"]
