"""Two trained landmark models, compared per image on the validation parts they share.

    python scripts/landmark_compare.py --baseline RUN [RUN ...] --candidate RUN [RUN ...] --out reports/NAME.md
        [--split val|test]

The i-th candidate run is paired with the i-th baseline run (e.g. fold i of two ``medtransfer cv`` configurations,
same seed): both are scored on that run's own carved validation part (``medtransfer evaluate RUN --split val``), which
must be the same images, and the per-image MRE is compared pooled over the pairs (mean difference, bootstrap 95%
interval, Wilcoxon signed-rank) and pair by pair, overall and per landmark. Choose on ``--split val`` (the default);
``--split test`` scores the held-out folds, to report a choice already made, never to make one.

Beside ``scripts/landmark_test_time.py``, which compares prediction-time options of one trained model, this compares
two trainings: the pairing by image removes the images' own difficulty, which two validation MREs side by side keep.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from transfer.api import EvalResult
from transfer.markdown import md_table
from transfer.runs.evaluate import evaluate_run
from transfer.stats import paired_errors

#: the stage metrics a two-stage (or cascaded) model reports beside its refined MRE, when it has them
STAGES = ("global_mre_mm", "coarse_mre_mm", "refine_from_truth_mre_mm")


def _scored(run: Path, split: str) -> EvalResult:
    res = evaluate_run(run, split=split)
    print(f"{run}: {split} MRE {res.metrics['mre_mm']:.4f} mm", file=sys.stderr)
    return res


def _pair(base: Path, cand: Path, split: str) -> tuple[EvalResult, EvalResult]:
    a, b = _scored(base, split), _scored(cand, split)
    if list(a.predictions["image"]) != list(b.predictions["image"]):
        raise SystemExit(f"{cand} and {base}: their {split} parts are not the same images (train both with the same "
                         "data.split_seed, fold and validation fraction)")
    return a, b


def _row(name: str, res: EvalResult) -> dict[str, object]:
    m = res.metrics
    return {"model": name, "n_images": m["n_images"], "mre_mm": m["mre_mm"], "sdr_2.0mm": m["sdr"]["2.0"],
            "over_10.0mm": m["over"]["10.0"], **{k: m.get(k, float("nan")) for k in STAGES}}


def compare(baseline: list[Path], candidate: list[Path], split: str = "val"
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per-run metrics, the paired comparison pooled and per pair, per-landmark means) of candidate vs baseline."""
    pairs = [_pair(a, b, split) for a, b in zip(baseline, candidate)]
    runs = pd.DataFrame([row for (a, b), base, cand in zip(pairs, baseline, candidate)
                         for row in (_row(str(base), a), _row(str(cand), b))])
    rows = []
    for label, chosen in [(f"pooled ({len(pairs)} pairs)", pairs), *((cand.name, [p]) for cand, p in
                                                                      zip(candidate, pairs))]:
        base_err = np.concatenate([np.nanmean(a.outputs["err"], axis=1) for a, _ in chosen])
        cand_err = np.concatenate([np.nanmean(b.outputs["err"], axis=1) for _, b in chosen])
        paired = paired_errors(cand_err, base_err, metric="mre_mm")
        rows.append({"pair": label, "metric": "mre_mm", "n_images": len(base_err), "baseline": float(base_err.mean()),
                     "candidate": float(cand_err.mean()), "difference": paired["difference"],
                     "ci95_lo": paired["ci95"][0], "ci95_hi": paired["ci95"][1], "p_value": paired["p_value"]})
    names = [entry["name"] for entry in pairs[0][0].metrics["per_landmark"]]
    base_lm = np.concatenate([a.outputs["err"] for a, _ in pairs])  # (N, L) mm
    cand_lm = np.concatenate([b.outputs["err"] for _, b in pairs])
    landmarks = pd.DataFrame({"landmark": names, "baseline_mm": np.nanmean(base_lm, axis=0),
                              "candidate_mm": np.nanmean(cand_lm, axis=0),
                              "baseline_over_4mm_%": 100 * np.nanmean(base_lm > 4.0, axis=0),
                              "candidate_over_4mm_%": 100 * np.nanmean(cand_lm > 4.0, axis=0)})
    landmarks.insert(3, "difference_mm", landmarks["candidate_mm"] - landmarks["baseline_mm"])
    return runs, pd.DataFrame(rows), landmarks


def _report(argv: list[str], split: str, runs: pd.DataFrame, comparison: pd.DataFrame, landmarks: pd.DataFrame) -> str:
    purpose = ("the parts the choice is made on" if split == "val" else
               "held-out folds: this reports a choice made on validation, it does not make one")
    return f"""# Landmark model comparison on the {split} parts of {len(runs) // 2} pair(s) of runs

Regenerate (from the project root; the runs trained first):

    python scripts/landmark_compare.py {" ".join(shlex.quote(a) for a in argv)}

Each run scored on its own `{split}` part ({purpose}; `medtransfer evaluate RUN --split {split}`); a candidate run
and its baseline share those images.

## Per run

{md_table(runs, digits=4)}

## Candidate against baseline, paired per image

Difference of the per-image MRE (candidate - baseline; negative is better), bootstrap 95% interval, Wilcoxon
signed-rank p; pooled over the pairs, then pair by pair.

{md_table(comparison, digits=4)}

## Per landmark (mean radial error over the pooled images)

{md_table(landmarks, digits=3)}
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", nargs="+", type=Path, required=True, help="trained runs of the baseline")
    parser.add_argument("--candidate", nargs="+", type=Path, required=True,
                        help="trained runs of the candidate, in the baseline's order")
    parser.add_argument("--split", choices=("val", "test"), default="val", help="the runs' own split to score")
    parser.add_argument("--out", type=Path, required=True, help="the markdown report to write")
    args = parser.parse_args(argv)
    if len(args.baseline) != len(args.candidate):
        parser.error(f"{len(args.baseline)} baseline runs and {len(args.candidate)} candidate runs: pair them one "
                     "to one")
    missing = [str(r) for r in (*args.baseline, *args.candidate) if not (r / "model.pt").is_file()]
    if missing:
        parser.error(f"not trained runs (no model.pt): {', '.join(missing)}")
    args.out.write_text(_report(argv, args.split, *compare(args.baseline, args.candidate, args.split)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
