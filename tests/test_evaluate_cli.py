"""`emodebias evaluate` and `evaluate_predictions`: the predictions-CSV journey and bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame as FairlearnFrame
from sklearn.metrics import f1_score, recall_score
from typer.testing import CliRunner

from emodebias.cli import app
from emodebias.data.manifest import Manifest
from emodebias.metrics import MetricsInputError, evaluate_predictions

CLASSES = ["angry", "happy", "sad", "neutral"]
runner = CliRunner()


def _predictions(n: int = 800, speakers: int = 24, seed: int = 0) -> pd.DataFrame:
    """Men's predictions are noisier; ages in years (numeric)."""
    rng = np.random.default_rng(seed)
    spk = rng.integers(0, speakers, n)
    gender = np.where(spk % 2 == 0, "female", "male")
    targets = rng.dirichlet(np.full(4, 0.5), n)
    logits = 3 * targets + np.where(gender == "male", 2.0, 0.6)[:, None] * rng.normal(size=(n, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pd.DataFrame({"utt_id": [f"u{i:04d}" for i in range(n)],
                       "speaker": [f"spk{s:02d}" for s in spk], "gender": gender,
                       "age": 20 + (spk * 7) % 45})
    for j, c in enumerate(CLASSES):
        df[f"prob_{c}"] = probs[:, j]
        df[f"label_{c}"] = targets[:, j]
    return df


def _run(*args: str):
    return runner.invoke(app, ["evaluate", *args])


def test_j1_predictions_csv_to_metrics_with_intervals(tmp_path: Path) -> None:
    df = _predictions()
    csv = tmp_path / "preds.csv"
    df.to_csv(csv, index=False)
    out = tmp_path / "metrics"
    result = _run("-p", str(csv), "--attributes", "gender,age", "--bin", "age=30,45",
                  "--intersections", "gender,age", "--n-boot", "300", "--n-perm", "200",
                  "--out", str(out))
    assert result.exit_code == 0, result.output
    y = df[[f"label_{c}" for c in CLASSES]].to_numpy() > 0.25
    p = df[[f"prob_{c}" for c in CLASSES]].to_numpy() > 0.25
    macro = f1_score(y, p, average="macro", zero_division=0)
    assert f"macro_f1     {macro:.4f}" in result.output
    # TPR gap of two groups = RMS over classes of fairlearn's per-class recall difference
    diffs = [FairlearnFrame(metrics=recall_score, y_true=y[:, j], y_pred=p[:, j],
                            sensitive_features=df.gender).difference() for j in range(4)]
    tpr_gap = float(np.sqrt(np.mean(np.square(diffs))))
    gaps = pd.read_csv(out / "gaps.csv")
    row = gaps[(gaps.attribute == "gender") & (gaps.metric == "tpr_gap")].iloc[0]
    assert row.value == pytest.approx(tpr_gap, abs=1e-12)
    assert f"tpr_gap          {tpr_gap:.4f}" in result.output
    assert row.status == "ok" and row.ci_low <= row.value_bc <= row.ci_high
    assert row.p_perm < 0.05 and row.noise_floor < row.value  # men really are worse
    assert row.averaging.startswith("root mean square") and row.worst_class in CLASSES
    assert "Class averaging: root mean square" in result.output
    # the binned age groups and the crossed attribute are scored; small cells are flagged
    assert set(gaps.attribute) == {"gender", "age", "gender×age"}
    crossed = gaps[gaps.attribute == "gender×age"]
    assert (crossed.status == "not estimable").all()
    assert crossed.reason.str.contains("too few speakers").all()
    assert "not estimable: too few speakers" in result.output
    per_class = pd.read_csv(out / "per_class.csv")
    sel = per_class[(per_class.attribute == "gender") & (per_class.rate == "tpr")]
    assert sel.contrast.unique().tolist() == ["male − female"]
    np.testing.assert_allclose(np.abs(sel["diff"]), np.abs(diffs), atol=1e-12)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["not_estimable"] and summary["info"]["averaging"].startswith("root mean")
    # the Python journey gives the same numbers
    res = evaluate_predictions(csv, attributes=["gender", "age"], bins={"age": [30, 45]},
                               intersections=[("gender", "age")], n_boot=300, n_perm=200)
    assert res.summary["gender.tpr_gap"] == pytest.approx(tpr_gap, abs=1e-12)
    assert res.summary["macro_f1"] == pytest.approx(macro, abs=1e-12)
    num = ["value", "value_bc", "ci_low", "ci_high", "p_perm", "noise_floor"]
    np.testing.assert_allclose(res.gaps[num].to_numpy(float), gaps[num].to_numpy(float),
                               atol=1e-12)
    assert res.gaps.status.tolist() == gaps.status.tolist()


def test_parquet_npz_and_run_folder_agree(tmp_path: Path) -> None:
    df = _predictions(n=300, speakers=12)
    df.to_parquet(tmp_path / "p.parquet")
    ref = evaluate_predictions(tmp_path / "p.parquet", attributes=["gender"], n_boot=50)
    run = tmp_path / "run"
    run.mkdir()
    # object (pandas string) arrays, as np.savez writes them from a DataFrame
    np.savez(run / "predictions.npz", utt_ids=df.utt_id.to_numpy(object),
             probs=df[[f"prob_{c}" for c in CLASSES]].to_numpy(),
             targets=df[[f"label_{c}" for c in CLASSES]].to_numpy(),
             classes=np.array(CLASSES, dtype=object), speaker=df.speaker.to_numpy(object),
             gender=df.gender.to_numpy(object))
    for source in (run, run / "predictions.npz"):
        res = evaluate_predictions(source, attributes=["gender"], n_boot=50)
        assert res.summary == pytest.approx(ref.summary, abs=1e-12)
    result = _run("-p", str(run), "--attributes", "gender", "--n-boot", "50")
    assert result.exit_code == 0, result.output and "tpr_gap" in result.output


def test_class_order_of_predictions_is_honoured(tmp_path: Path) -> None:
    df = _predictions(n=240, speakers=12)
    df["gender"] = df.gender.str[0].str.upper()
    manifest = df[["utt_id", "speaker", "gender"]].assign(path="/x.wav")
    order = ["sad", "neutral", "angry", "happy"]  # the manifest's class order differs
    for c in order:
        manifest[f"soft_{c}"] = df[f"label_{c}"]
    m = Manifest(manifest, order, corpus="toy")
    probs = df[[f"prob_{c}" for c in CLASSES]].to_numpy()
    preds = {"utt_ids": df.utt_id.to_numpy(), "probs": probs, "classes": np.array(CLASSES)}
    res = evaluate_predictions(preds, manifest=m, attributes=["gender"])
    direct = evaluate_predictions(_table_source(df, tmp_path), attributes=["gender"])
    assert res.summary["macro_f1"] == pytest.approx(direct.summary["macro_f1"], abs=1e-12)
    tpr = res.table[(res.table.metric == "tpr") & (res.table.attribute == "all")]
    ref = direct.table[(direct.table.metric == "tpr") & (direct.table.attribute == "all")]
    assert dict(zip(tpr.cls, tpr.value, strict=True)) == pytest.approx(
        dict(zip(ref.cls, ref.value, strict=True)))
    bad = dict(preds, classes=np.array(["angry", "happy", "sad", "calm"]))
    with pytest.raises(MetricsInputError, match=r"'calm'\].*but the manifest has \['sad'"):
        evaluate_predictions(bad, manifest=m)


def _table_source(df: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["--attributes", "race"], r"\['race'\] not found"),
    (["--attributes", "age"], r"numeric with 12 distinct values.*--bin age="),
    (["--bin", "age"], r"--bin takes NAME=EDGE"),
    (["--speaker", "talker"], r"no speaker column 'talker'"),
    (["--intersections", "gender,race"], r"intersection \['gender', 'race'\]"),
    (["--prob-prefix", "p_"], r"no probability columns p_<class>"),
])
def test_bad_input_is_one_line_error(tmp_path: Path, args: list[str], message: str) -> None:
    csv = _table_source(_predictions(n=200, speakers=12), tmp_path)
    result = _run("-p", str(csv), "--n-boot", "0", "--n-perm", "0", *args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert re.search(message, lines[0]), lines[0]


def test_existing_file_as_out_and_missing_predictions(tmp_path: Path) -> None:
    csv = _table_source(_predictions(n=100, speakers=12), tmp_path)
    result = _run("-p", str(csv), "--n-boot", "0", "--out", str(csv))
    assert result.exit_code == 2 and "existing file" in result.output
    result = _run("-p", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2 and "no predictions file" in result.output
