"""Statistics of the report: fold intervals, Holm, design limits, flags, pooled out-of-fold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from emodebias.bench.grid import RunSpec
from emodebias.bench.results import tidy_frame
from emodebias.data.manifest import Manifest
from emodebias.metrics import MetricsInputError, evaluate
from emodebias.metrics.oof import pooled_frame, pooled_oof
from emodebias.metrics.stats import fold_interval, holm, min_sign_flip_p, pairs_needed
from emodebias.report.html import gap_rows, oof_rows, summary_wide

CLASSES = ["angry", "sad", "neutral"]


def test_holm_by_hand_and_design_limits() -> None:
    # sorted p: .01 x3 = .03; .03 x2 = .06; .04 x1 = .04 -> running max .06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert min_sign_flip_p(3) == 0.25 and min_sign_flip_p(5) == 0.0625
    assert pairs_needed(0.05, 1) == 6  # 2/2^6 = 0.031
    assert pairs_needed(0.05, 10) == 9  # 2/2^9 = 0.0039 <= 0.005
    x = np.array([0.61, 0.66, 0.64, 0.70, 0.65])
    f = fold_interval(x)
    lo, hi = stats.t.interval(0.95, 4, loc=x.mean(), scale=stats.sem(x))
    assert f["ci_low"] == pytest.approx(lo) and f["ci_high"] == pytest.approx(hi)
    assert np.isnan(fold_interval([0.6])["ci_low"])


def _grid(tmp_path: Path, folds: int = 3, speakers: int = 18, n: int = 540):
    """A grid folder with two methods × `folds` folds; fold f tests speakers s % folds == f."""
    rng = np.random.default_rng(0)
    spk = np.arange(n) % speakers
    soft = rng.dirichlet(np.ones(3), n)
    df = pd.DataFrame({"utt_id": [f"u{i:04d}" for i in range(n)], "path": "/x.wav",
                       "speaker": [f"s{s:02d}" for s in spk],
                       "gender": np.where(spk % 2 == 0, "F", "M")})
    for j, c in enumerate(CLASSES):
        df[f"soft_{c}"] = soft[:, j]
    manifest = Manifest(df, CLASSES, corpus="toy")
    records = []
    for method in ("erm", "rw"):
        noise = 2.0 if method == "erm" else 0.5
        for f in range(folds):
            rows = np.flatnonzero(spk % folds == f)
            logits = 3 * soft[rows] + noise * (df.gender[rows] == "M").to_numpy()[:, None] * \
                rng.normal(size=(len(rows), 3))
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            spec = RunSpec(corpus="toy", encoder="e", fold=str(f), method=method,
                           groups="none" if method == "erm" else "truth:gender")
            run = tmp_path / "runs" / spec.hash
            run.mkdir(parents=True)
            np.savez(run / "predictions.npz", utt_ids=df.utt_id.to_numpy(str)[rows], probs=probs,
                     targets=soft[rows], classes=np.array(CLASSES))
            res = evaluate(soft[rows], probs, {"gender": df.gender[rows]},
                           speakers=spk[rows], n_boot=100, n_perm=100, classes=CLASSES)
            rec = {"hash": spec.hash, "name": spec.name, "spec": spec.to_dict(),
                   "metrics": {"summary": res.summary, "table": []}}
            (run / "record.json").write_text(json.dumps(rec))
            records.append(rec)
    return manifest, records, spk, soft


def test_pooled_out_of_fold_equals_scoring_the_concatenation(tmp_path: Path) -> None:
    manifest, records, spk, soft = _grid(tmp_path)
    pooled = pooled_oof(tmp_path, manifest=manifest, n_boot=200, n_perm=100, seed=4)
    assert sorted(p.config["method"] for p in pooled) == ["erm", "rw"]
    erm = next(p for p in pooled if p.config["method"] == "erm")
    assert erm.folds == ["0", "1", "2"]
    # by hand: concatenate the folds' predictions in fold order and score them once
    ids, probs, folds = [], [], []
    for f in range(3):
        run = next(tmp_path / "runs" / r["hash"] for r in records
                   if r["spec"]["method"] == "erm" and r["spec"]["fold"] == str(f))
        with np.load(run / "predictions.npz") as z:
            ids += list(z["utt_ids"])
            probs.append(z["probs"])
            folds += [str(f)] * len(z["utt_ids"])
    rows = manifest.index_of(ids)
    ref = evaluate(soft[rows], np.concatenate(probs), {"gender": manifest.df.gender[rows]},
                   speakers=manifest.df.speaker[rows], strata=folds, n_boot=200, n_perm=100,
                   seed=4, classes=CLASSES)
    assert erm.result.summary == pytest.approx(ref.summary, abs=1e-12)
    # each fold alone has 3 speakers per gender (not estimable); pooled has 9 per gender
    assert erm.result.gaps.speakers.iloc[0] == "F:9, M:9"
    assert (erm.result.gaps.status == "ok").all()
    per_fold = [r["metrics"]["summary"]["gender.tpr_gap_estimable"] for r in records]
    assert per_fold == [0.0] * len(records)
    frame = pooled_frame(pooled)
    assert set(frame.method) == {"erm", "rw"} and "gender.tpr_gap_bc.ci_low" in frame


def test_report_rows_show_flags_nulls_and_pooled_scores(tmp_path: Path) -> None:
    manifest, records, _, _ = _grid(tmp_path)
    key = RunSpec(corpus="toy", encoder="e", fold="0", method="erm").corpus_key
    (tmp_path / "cache" / "manifests").mkdir(parents=True)
    manifest.save(tmp_path / "cache" / "manifests" / f"{key}.parquet")
    wide = summary_wide(tidy_frame(records))
    head, body = gap_rows(wide)
    erm = [r for r in body if r[0] == "ERM" and "TPR" in r[2]][0]
    assert erm[7] == "3/3" and erm[8] == "3"  # every fold flagged, 3 speakers per gender
    head, body, note = oof_rows(tmp_path, wide)
    assert note.startswith("The tables above score each fold's test set separately")
    labels = {r[0]: r for r in body}
    assert set(labels) == {"ERM", "RW"}
    assert labels["ERM"][3] == "F:9, M:9" and "[" in labels["ERM"][5]
    assert float(labels["ERM"][4]) > float(labels["RW"][4])  # ERM's men are noisier


def test_folds_sharing_test_utterances_are_not_pooled(tmp_path: Path) -> None:
    manifest, records, _, _ = _grid(tmp_path)
    erm = [r for r in records if r["spec"]["method"] == "erm"]
    with np.load(tmp_path / "runs" / erm[0]["hash"] / "predictions.npz") as z:
        data = {k: z[k] for k in z.files}
    with np.load(tmp_path / "runs" / erm[1]["hash"] / "predictions.npz") as z:
        data["utt_ids"][0] = z["utt_ids"][0]  # one utterance tested in two folds
    np.savez(tmp_path / "runs" / erm[0]["hash"] / "predictions.npz", **data)
    with pytest.raises(MetricsInputError, match="share test utterances"):
        pooled_oof(tmp_path, manifest=manifest, n_boot=0, n_perm=0)
    key = RunSpec(corpus="toy", encoder="e", fold="0", method="erm").corpus_key
    (tmp_path / "cache" / "manifests").mkdir(parents=True)
    manifest.save(tmp_path / "cache" / "manifests" / f"{key}.parquet")
    _, body, note = oof_rows(tmp_path, summary_wide(tidy_frame(records)))
    assert body == [] and note.startswith("Pooled out-of-fold scoring skipped:")
