"""`describe` and `frequency`: texts about the classes from an LLM, and synonym counts."""

from __future__ import annotations

import argparse
import json
import sys

from .common import check_output, output


def describe(args: argparse.Namespace) -> int:
    check_output("--out", args.out, ".json")
    from ..text.llm import generate
    from ..text.classnames import parse_classnames

    try:
        table = generate(parse_classnames(args.classes), args.kind, base_url=args.base_url,
                         model=args.model, api_key=args.api_key, cache_dir=args.cache,
                         n_items=args.items, context=args.context, concurrency=args.concurrency,
                         max_attempts=args.attempts, timeout=args.timeout,
                         progress=not args.no_progress)
    except KeyboardInterrupt:
        print("zeroshot-plus: interrupted; the answers received so far are cached, and the same "
              "command resumes from them", file=sys.stderr)
        return 130
    with output(args.out) as handle:
        json.dump(table, handle, indent=1, ensure_ascii=False)
    print(f"wrote {args.kind} for {len(table)} classes to {args.out}", file=sys.stderr)
    return 0


def frequency(args: argparse.Namespace) -> int:
    check_output("--out", args.out, ".json")
    from ..text.frequency import build_index, mine_frequencies
    from ..text.synonyms import load_synonyms

    table = load_synonyms(args.synonyms, args.classes)
    if args.engine == "ray":
        from ..distributed import caption_counts
        from .common import join_ray

        join_ray(args.ray_address)
        counts = caption_counts(args.captions, table, column=args.column, require=args.require,
                                address=args.ray_address, progress=not args.no_progress)
        metrics = mine_frequencies(table, counts, require=args.require, strategy=args.strategy,
                                   progress=False)
        n_captions = len(counts)
    else:
        index = args.index or f"{args.captions[0]}.fts5.sqlite"
        with build_index(args.captions, index, column=args.column,
                         progress=not args.no_progress) as captions:
            metrics = mine_frequencies(table, captions, require=args.require,
                                       strategy=args.strategy, progress=not args.no_progress)
            n_captions = len(captions)
    with output(args.out) as handle:
        json.dump(metrics, handle, indent=1)
    changed = sum(m["most_common_name"] != m["name"] for m in metrics.values())
    print(f"counted {sum(len(m['alternates']) for m in metrics.values())} synonyms of "
          f"{len(metrics)} classes in {n_captions} captions; {changed} classes take a synonym; "
          f"wrote {args.out}", file=sys.stderr)
    return 0
