"""Time and peak memory of the SCE score: ours against the reference approach, in one run.

Synthetic CLIP-like data: n unit-norm image embeddings (D = 512, float32) paired with their
prompts' embeddings (each of --prompts prompts repeated n/--prompts times), Gaussian kernel
through P random Fourier features (P/2 frequencies, sigma 1, seed 0).

1. ours: ``zeroshot_plus.sce_score`` — covariances summed over row blocks by BLAS in float64,
   a Cholesky solve, eigenvalues in place (METHODS.md §6.8: "a single GEMM ΦᵀΦ").
2. reference approach, as METHODS.md §6.2–6.8 describes aziksh-ospanov/CLIP-DISSECTION
   (re-implemented here, not copied): float32 torch features for all n rows; each of C_TT,
   C_II, C_TI summed from batched outer products (torch.bmm of 64 rows -> a 64 × P × P
   tensor, 6.4 GB at P = 5000, summed over the batch); C_{I|T} = C_II − C_TIᵀ pinv(C_TT +
   1e-12 I) C_TI; eigvalsh of C_{I|T} and C_{I←T}; SCE = exp(−Σ λ log(λ/Σλ)).

Each variant runs in its own process, started by a small launcher that reports that process's
own peak RSS (on Linux a child started straight from a large parent inherits its peak).

The reference's outer products run at well under a gigaflop per second, so its covariance
stage would take hours at n = 10,000 on a small CPU. It therefore runs, at full P and full
batch size (so its peak memory is the full-size one, its features cover all n rows), over the
first --reference-rows rows only; that stage's time is then scaled by n / rows (it is linear
in the number of batches) and the table says so. Its pinv and eigenvalue stage runs in full.

Usage: python benchmarks/schur.py [--n 10000] [--features 5000] [--reference-rows 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

from measure import run_measured

DIM, SIGMA, SEED, BATCH = 512, 1.0, 0, 64

def make_data(n: int, n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """(images, texts), both (n, 512) float32 unit rows; image i belongs to prompt i % n_prompts."""
    rng = np.random.default_rng(SEED)
    prompts = rng.standard_normal((n_prompts, DIM)).astype(np.float32)
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    texts = prompts[np.arange(n) % n_prompts]
    images = texts + rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    return images.astype(np.float32), texts.astype(np.float32)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(images: np.ndarray, texts: np.ndarray, n_features: int) -> dict:
    from zeroshot_plus import sce_score

    start = time.perf_counter()
    result = sce_score(images, texts, kernel="gaussian", sigma=SIGMA, n_features=n_features,
                       random_state=SEED)
    return {"seconds": time.perf_counter() - start, "sce": result.score,
            "text_sce": result.text_score, "form": result.form}


def run_reference(images: np.ndarray, texts: np.ndarray, n_features: int, rows: int) -> dict:
    import torch

    from zeroshot_plus.methods.schur import draw_frequencies

    m = n_features // 2  # the same frequencies as ours, so that the scores can be compared
    omega = torch.from_numpy(draw_frequencies(DIM, n_features, SIGMA, SEED).astype(np.float32))

    def features(x: np.ndarray) -> torch.Tensor:
        projection = torch.from_numpy(x) @ omega
        return torch.cat([torch.cos(projection), torch.sin(projection)], dim=1) / m ** 0.5

    start = time.perf_counter()
    phi_t, phi_i = features(texts), features(images)  # all n rows, as the reference holds them
    feature_seconds = time.perf_counter() - start

    def covariance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(n_features, n_features)
        for s in range(0, rows, BATCH):
            total += torch.bmm(a[s:s + BATCH, :, None], b[s:s + BATCH, None, :]).sum(dim=0)
        return total / rows

    start = time.perf_counter()
    c_tt, c_ii, c_ti = covariance(phi_t, phi_t), covariance(phi_i, phi_i), covariance(phi_t, phi_i)
    covariance_seconds = time.perf_counter() - start

    start = time.perf_counter()
    explained = c_ti.T @ torch.linalg.pinv(c_tt + 1e-12 * torch.eye(n_features)) @ c_ti
    residual = c_ii - explained
    values = torch.linalg.eigvalsh(residual).clamp(min=1e-10).double()
    text_values = torch.linalg.eigvalsh(explained).clamp(min=1e-10).double()
    tail_seconds = time.perf_counter() - start
    sce = float(torch.exp(-(values * torch.log(values / values.sum())).sum()))
    text_sce = float(torch.exp(-(text_values * torch.log(text_values / text_values.sum())).sum()))
    return {"feature_seconds": feature_seconds, "covariance_seconds": covariance_seconds,
            "tail_seconds": tail_seconds, "rows": rows, "sce": sce, "text_sce": text_sce}


def child(args) -> None:
    images, texts = make_data(args.n, args.prompts)
    import zeroshot_plus  # noqa: F401  (both variants pay for the same imports, torch included)

    baseline = peak_mib()
    if args.variant == "ours":
        report = run_ours(images, texts, args.features)
    else:
        report = run_reference(images, texts, args.features, min(args.reference_rows, args.n))
    report["baseline_mib"] = baseline
    print(json.dumps(report))


def measure(variant: str, args) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--n", str(args.n),
               "--features", str(args.features), "--prompts", str(args.prompts),
               "--reference-rows", str(args.reference_rows)]
    wall, peak, stdout, _ = run_measured(command)
    report = json.loads(stdout.strip().splitlines()[-1])
    report.update(wall=wall, peak_mib=peak)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="image-prompt pairs")
    parser.add_argument("--features", type=int, default=5000, help="random Fourier features P")
    parser.add_argument("--prompts", type=int, default=100, help="distinct prompts")
    parser.add_argument("--reference-rows", type=int, default=128,
                        help="rows the reference's outer-product stage runs over (then scaled)")
    parser.add_argument("--child", choices=("ours", "reference"), dest="variant",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    ours, reference = measure("ours", args), measure("reference", args)
    rows = reference["rows"]
    scaled = reference["covariance_seconds"] * args.n / rows
    reference_seconds = reference["feature_seconds"] + scaled + reference["tail_seconds"]
    print(f"SCE, n = {args.n:,} pairs ({args.prompts} prompts), P = {args.features:,} random "
          f"Fourier features, D = {DIM}\n")
    print(f"{'':<34}{'ours':>12}{'reference':>14}{'ratio':>9}")
    print(f"{'score time (s)':<34}{ours['seconds']:>12.1f}{reference_seconds:>14.1f}"
          f"{reference_seconds / ours['seconds']:>8.1f}x")
    print(f"{'  reference: features':<34}{'':>12}{reference['feature_seconds']:>14.1f}")
    print(f"{f'  reference: outer products, {rows} rows':<34}{'':>12}"
          f"{reference['covariance_seconds']:>14.1f}   (measured)")
    print(f"{f'  reference: outer products, {args.n:,} rows':<34}{'':>12}{scaled:>14.1f}"
          f"   (extrapolated x{args.n / rows:.0f})")
    print(f"{'  reference: pinv + eigvalsh':<34}{'':>12}{reference['tail_seconds']:>14.1f}")
    print(f"{'peak RSS (MiB)':<34}{ours['peak_mib']:>12.0f}{reference['peak_mib']:>14.0f}"
          f"{reference['peak_mib'] / ours['peak_mib']:>8.1f}x")
    print(f"{'  of which imports + data':<34}{ours['baseline_mib']:>12.0f}"
          f"{reference['baseline_mib']:>14.0f}")
    print(f"{'peak RSS above imports + data':<34}{ours['peak_mib'] - ours['baseline_mib']:>12.0f}"
          f"{reference['peak_mib'] - reference['baseline_mib']:>14.0f}"
          f"{(reference['peak_mib'] - reference['baseline_mib']) / (ours['peak_mib'] - ours['baseline_mib']):>8.1f}x")
    print(f"{'SCE (images | prompts)':<34}{ours['sce']:>12.4f}{reference['sce']:>14.4f}"
          f"   (reference over its {rows} rows)")
    print(f"{'SCE of the text-explained part':<34}{ours['text_sce']:>12.4f}"
          f"{reference['text_sce']:>14.4f}")
    print(f"\nours: {ours['form']} form, float64; wall time of each process: ours "
          f"{ours['wall']:.0f} s, reference {reference['wall']:.0f} s (with the reduced rows).")


if __name__ == "__main__":
    main()
