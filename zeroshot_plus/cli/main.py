"""`zeroshot-plus`: parse, run the command, turn user errors into one line on stderr."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import warnings
from importlib import import_module
from typing import Sequence

from ..errors import InputError
from .parser import build_parser, resolve_options

# command -> the module that runs it, imported only when it runs
_COMMANDS = {"embed": "classify", "predict": "classify", "evaluate": "classify",
             "fit": "classify", "describe": "language", "frequency": "language",
             "sce": "dissect", "edit": "dissect", "match": "dissect",
             "benchmark": "benchmark"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="zeroshot-plus: %(message)s")
    # PIL's DecompressionBombWarning: data.images.read_image names the file instead
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    try:
        resolve_options(args)
        command = getattr(import_module(f".{_COMMANDS[args.command]}", __package__), args.command)
        return command(args)
    except InputError as exc:
        print(f"zeroshot-plus: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `zeroshot-plus predict ... | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        if args.command == "benchmark":
            print(f"zeroshot-plus: interrupted; the finished runs are recorded in "
                  f"{os.path.join(args.out, 'records.jsonl')} and the embeddings kept in the "
                  f"store: run the same command again to do the rest", file=sys.stderr)
        else:
            print("zeroshot-plus: interrupted; embeddings written so far are kept in the "
                  "--cache store" if args.cache else "zeroshot-plus: interrupted",
                  file=sys.stderr)
        return 130


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def _keep_freed_memory() -> None:
    """Let glibc's allocator keep freed memory for reuse in this process.

    By default, blocks above the mmap threshold (128 KiB, rising to at most 32 MiB) are mapped
    fresh from the system for every request and unmapped when freed. The encoder's activations
    (10-40 MiB per layer and batch) would be faulted in page by page on every batch: measured
    with ViT-B-32 on a CPU, that made the memory-bound steps (GELU, copies) about three times
    slower inside ``predict`` than in a warm loop. The command owns its process, so it trades a
    flat, higher RSS for that time. Other C libraries have no ``mallopt``; nothing changes there.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def run() -> None:
    """The console script: ``main``, then end the process without the interpreter's teardown.

    Every output file is closed (and renamed into place) before ``main`` returns, so after
    flushing the streams nothing is left to do; freeing the objects of torch, scipy and
    scikit-learn would add about 0.5 s, a sixth of a ``predict`` answered from the store.
    """
    _keep_freed_memory()
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the output has nowhere to go
            pass
    os._exit(code)

