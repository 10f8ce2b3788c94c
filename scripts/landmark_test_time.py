"""Prediction-time options of trained landmark models, measured on each run's own validation part.

    python scripts/landmark_test_time.py RUN [RUN ...] --out reports/NAME.md [--variant NAME=KEY=VALUE[,KEY=VALUE]]
    python scripts/landmark_test_time.py RUN RUN [RUN ...] --ensemble --out reports/NAME.md

Each run (e.g. the folds of ``medtransfer cv``) is scored on its carved validation part (``medtransfer evaluate RUN
--split val``) as trained and with each variant's ``task.landmarks`` settings (the test-time crops of the
refinement, the shifted copies of the global stage, the shape step). A variant is compared with the model as
trained on the same images, paired per image over all runs' validation parts pooled (mean difference of the
per-image MRE, bootstrap 95% interval, Wilcoxon signed-rank, Holm over the variants), and fold by fold: a
prediction-time option is worth its inference cost where it helps on every fold, not on average over one lucky one.
No test split is read. Without --variant: the built-in list below.

With --ensemble, the runs are seeds of one model trained on the same split (one ``data.split_seed``): their refined
coordinates, combined per landmark (mean, median), are scored as one model against each run alone, paired per image.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.landmarks.metrics import radial_errors_mm
from transfer.markdown import md_table
from transfer.runs.evaluate import evaluate_run
from transfer.stats import paired_errors
from transfer.studies.seed_stats import holm

#: name -> the task.landmarks settings of a variant (refine_tta_shift: 5x the refinement's inference; global_tta_shift:
#: 5x the global stage's; the shape step: a few matrix products)
VARIANTS = {
    "refine_tta_shift=0.1": ["task.landmarks.refine_tta_shift=0.1"],
    "global_tta_shift=1": ["task.landmarks.global_tta_shift=1"],
    "global_tta_shift=2": ["task.landmarks.global_tta_shift=2"],
    "shape_prior": ["task.landmarks.shape_prior=true"],
    "global_tta_shift=2 + refine_tta_shift=0.1": ["task.landmarks.global_tta_shift=2",
                                                  "task.landmarks.refine_tta_shift=0.1"],
}
AS_TRAINED = "as trained"


def _score_one(name: str, settings: list[str], run: Path) -> tuple[dict[str, object], np.ndarray]:
    """One run scored on its validation part with one variant's settings: its row, and its per-image MRE."""
    start = time.perf_counter()
    res = evaluate_run(run, split="val", overrides=settings)
    seconds = time.perf_counter() - start
    m = res.metrics
    print(f"{name:45s} {run.name}: val MRE {m['mre_mm']:.4f} mm ({seconds:.0f} s)", file=sys.stderr)
    return ({"variant": name, "run": run.name, "n_images": m["n_images"], "mre_mm": m["mre_mm"],
             "global_mre_mm": m.get("global_mre_mm", float("nan")), "sdr_2.0mm": m["sdr"]["2.0"],
             "over_10.0mm": m["over"]["10.0"], "shape_moved": m.get("shape_moved", 0), "evaluate_s": seconds},
            np.nanmean(res.outputs["err"], axis=1))


def _score(runs: list[Path], variants: dict[str, list[str]], jobs: int = 1
           ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One row per (variant, run): its validation metrics and the wall time; and per variant the per-image MRE
    of all runs' validation parts, concatenated in run order. ``jobs`` > 1: that many processes, each scoring
    one (variant, run) at a time (a CPU's cores; each evaluate is one-threaded work)."""
    cells = [(name, settings, run) for name, settings in {AS_TRAINED: [], **variants}.items() for run in runs]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_score_one, *zip(*cells)))
    else:
        results = [_score_one(*cell) for cell in cells]
    per_image = {}
    for (name, _, _), (_, errors) in zip(cells, results):
        per_image.setdefault(name, []).append(errors)
    return pd.DataFrame([row for row, _ in results]), {k: np.concatenate(v) for k, v in per_image.items()}


def _comparisons(scores: pd.DataFrame, per_image: dict[str, np.ndarray]) -> pd.DataFrame:
    base = scores[scores["variant"] == AS_TRAINED].set_index("run")["mre_mm"]
    rows = []
    for name, errors in per_image.items():
        if name == AS_TRAINED:
            continue
        paired = paired_errors(errors, per_image[AS_TRAINED], metric="mre_mm")
        by_run = scores[scores["variant"] == name].set_index("run")["mre_mm"] - base
        rows.append({"variant": name, "metric": "mre_mm", "val MRE (pooled)": float(np.nanmean(errors)),
                     "difference": paired["difference"], "ci95_lo": paired["ci95"][0], "ci95_hi": paired["ci95"][1],
                     "p_value": paired["p_value"], "runs better": f"{int((by_run < 0).sum())} of {len(by_run)}",
                     "runs worse": f"{int((by_run > 0).sum())} of {len(by_run)}"})
    out = pd.DataFrame(rows)
    out.insert(out.columns.get_loc("p_value") + 1, "p_holm", holm(out["p_value"].tolist()))
    return out


def _report(argv: list[str], runs: list[Path], variants: dict[str, list[str]], scores: pd.DataFrame,
            comparisons: pd.DataFrame) -> str:
    n = int(scores[scores["variant"] == AS_TRAINED]["n_images"].sum())
    wide = scores.pivot(index="variant", columns="run", values="mre_mm").reindex([AS_TRAINED, *variants])
    wide["mean over runs"] = wide.mean(axis=1)
    means = scores.groupby("variant", sort=False)[["global_mre_mm", "sdr_2.0mm", "over_10.0mm", "shape_moved",
                                                   "evaluate_s"]].agg({"global_mre_mm": "mean", "sdr_2.0mm": "mean",
                                                                       "over_10.0mm": "mean", "shape_moved": "sum",
                                                                       "evaluate_s": "sum"})
    means["evaluate_s"] = means["evaluate_s"] / n
    means = means.rename(columns={"global_mre_mm": "global MRE (mean)", "sdr_2.0mm": "SDR@2 (mean)",
                                  "over_10.0mm": "% > 10 mm (mean)", "shape_moved": "landmarks moved",
                                  "evaluate_s": "evaluate s/image"})
    settings = "\n".join(f"- `{k}`: " + ", ".join(f"`{s}`" for s in v) for k, v in variants.items())
    return f"""# Prediction-time options of the landmark model, on the validation parts of {len(runs)} run(s)

Regenerate (from the project root; the runs trained first, e.g. by the `medtransfer cv` command their config names):

    python scripts/landmark_test_time.py {" ".join(shlex.quote(a) for a in argv)}

Each run scored on its own carved validation part ({n} images in all), as trained and with each variant's
prediction-time settings (`medtransfer evaluate RUN --split val --set ...`); no test split was read. Variants:

{settings}

## Validation MRE (mm) per run

{md_table(wide.reset_index(), digits=4)}

## Against the model as trained, paired per image ({n} images pooled over the runs)

Difference of the per-image MRE (variant - as trained; negative is better), bootstrap 95% interval, Wilcoxon
signed-rank p, Holm over the {len(variants)} variants; and on how many runs the variant's validation MRE is lower
or higher.

{md_table(comparisons, digits=4)}

## Other figures (mean over runs; `landmarks moved`: by the shape step, summed)

`evaluate s/image`: the wall time of the whole `evaluate` (loading the split, the model, both stages, the
refinement from the truth and the metrics) over the images scored, on this machine: relative costs, not the
inference time of `predict`.

{md_table(means.reset_index(), digits=3)}
"""


def _seeds(runs: list[Path], name: str) -> dict[str, object]:
    """A member's training seed and split seed (from its summary.json); "-" for a combination of members."""
    run = next((r for r in runs if r.name == name), None)
    if run is None:
        return {"seed": "-", "split_seed": "-"}
    summary = json.loads((run / "summary.json").read_text())
    # a run from before data.split_seed existed carved with its own seed
    return {"seed": summary.get("seed", "-"), "split_seed": summary.get("split_seed", summary.get("seed", "-"))}


def _ensemble(runs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs' validation predictions combined per landmark (mean and median of the coordinates), against each
    run alone on the same images: (one row per model, comparisons)."""
    members = {run.name: evaluate_run(run, split="val") for run in runs}
    first = next(iter(members.values()))
    for name, res in members.items():
        print(f"{name}: val MRE {res.metrics['mre_mm']:.4f} mm", file=sys.stderr)
        if list(res.predictions["image"]) != list(first.predictions["image"]):
            raise SystemExit(f"{name}: its validation part is not the other runs' images (train them with the same "
                             "data.split_seed)")
    true, spacing = first.outputs["true"], first.outputs["spacing"]
    stacked = np.stack([res.outputs["pred"] for res in members.values()])  # (runs, N, L, 2) original pixels
    errors = {name: res.outputs["err"] for name, res in members.items()}  # (N, L) mm each
    for how, combine in (("ensemble (mean)", np.mean), ("ensemble (median)", np.median)):
        errors[how] = radial_errors_mm(combine(stacked, axis=0), true, spacing)
    per_image = {name: np.nanmean(e, axis=1) for name, e in errors.items()}
    models = pd.DataFrame([{"model": k, **_seeds(runs, k), "val MRE (mm)": float(np.nanmean(e)),
                            "SDR@2 (%)": float(100 * np.mean(e[np.isfinite(e)] <= 2.0)),
                            "% > 10 mm": float(100 * np.mean(e[np.isfinite(e)] > 10.0))} for k, e in errors.items()])
    rows = []
    for how in ("ensemble (mean)", "ensemble (median)"):
        for name in members:
            paired = paired_errors(per_image[how], per_image[name], metric="mre_mm")
            rows.append({"model": how, "vs": name, "metric": "mre_mm", "difference": paired["difference"],
                         "ci95_lo": paired["ci95"][0], "ci95_hi": paired["ci95"][1], "p_value": paired["p_value"]})
    comparisons = pd.DataFrame(rows)
    comparisons["p_holm"] = holm(comparisons["p_value"].tolist())
    return models, comparisons


def _ensemble_report(argv: list[str], runs: list[Path], models: pd.DataFrame, comparisons: pd.DataFrame) -> str:
    return f"""# A seed ensemble of the landmark model, on the validation part its {len(runs)} members share

Regenerate (from the project root; the members trained first with one `data.split_seed`):

    python scripts/landmark_test_time.py {" ".join(shlex.quote(a) for a in argv)}

Each member scored on the shared carved validation part (`medtransfer evaluate RUN --split val`); the ensemble's
answer for a landmark is the mean, or the median, of the members' refined coordinates; no test split was read. The
ensemble costs the sum of its members, in training and in inference.

## Validation MRE

{md_table(models, digits=4)}

## Ensemble against each member, paired per image

Difference of the per-image MRE (ensemble - member; negative is better), bootstrap 95% interval, Wilcoxon
signed-rank p, Holm over the {len(comparisons)} comparisons.

{md_table(comparisons, digits=4)}
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="trained landmark run directories")
    parser.add_argument("--out", type=Path, required=True, help="the markdown report to write")
    parser.add_argument("--jobs", type=int, default=1, help="processes scoring at once (default 1)")
    parser.add_argument("--ensemble", action="store_true",
                        help="score the runs (seeds of one split_seed) combined as one model against each alone")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=KEY=VALUE[,KEY=VALUE]: a variant instead of the built-in list (repeatable)")
    args = parser.parse_args(argv)
    variants = VARIANTS
    if args.variant:
        variants = {}
        for spec in args.variant:
            name, _, settings = spec.partition("=")
            if not settings:
                parser.error(f"--variant {spec!r}: expected NAME=KEY=VALUE[,KEY=VALUE]")
            variants[name] = settings.split(",")
    missing = [str(r) for r in args.runs if not (r / "model.pt").is_file()]
    if missing:
        parser.error(f"not trained runs (no model.pt): {', '.join(missing)}")
    if args.ensemble:
        if len(args.runs) < 2 or args.variant:
            parser.error("--ensemble takes two or more runs and no --variant")
        args.out.write_text(_ensemble_report(argv, args.runs, *_ensemble(args.runs)))
        print(f"wrote {args.out}")
        return 0
    scores, per_image = _score(args.runs, variants, args.jobs)
    args.out.write_text(_report(argv, args.runs, variants, scores, _comparisons(scores, per_image)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
