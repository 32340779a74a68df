"""`zeroshot-plus benchmark`: the papers' protocols over standard data sets."""

from __future__ import annotations

import argparse
import os

from .common import load_backbone, log, warnings_to_stderr


def benchmark(args: argparse.Namespace) -> int:
    from ..evaluation.benchmark import Benchmark

    backbone = load_backbone(args)
    runner = Benchmark(backbone, args.root, datasets=args.datasets, methods=args.methods,
                       protocols=args.protocols, shots=args.shots, seeds=args.seeds,
                       out=args.out, cache=args.cache or os.path.join(args.out, "store"),
                       templates=args.templates, descriptors=args.descriptors,
                       real_metrics=args.real_metrics, n_views=args.views,
                       tpt_views=args.tpt_views, on_error="raise" if args.strict else "skip",
                       engine=args.engine, ray_address=args.ray_address,
                       progress=not args.no_progress)
    with warnings_to_stderr():
        report = runner.run()
    log.info("images: %d encoded, %d read from the store, %.1f s embedding test and "
             "validation sets", report.images_encoded, report.images_from_store,
             report.embed_seconds)
    print(f"{report.planned} runs: {report.ran} run now, {report.resumed} already recorded, "
          f"{len(report.skipped)} skipped (each logged above); {report.seconds:.1f} s "
          f"({report.embed_seconds:.1f} s embedding {report.images_encoded} images, "
          f"{report.images_from_store} read from the store)")
    for path in report.outputs:
        print(f"wrote {path}")
    return 0
