"""What the report shows beyond the metric tables: speakers per group of the test set, the group
sources' diagnostics next to the runs that trained on them, and the head's learned layer weights.

Each is checked against a count or score computed here from the manifest, the saved predictions,
the cached groups or the saved head, not from what the pipeline recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import normalized_mutual_info_score
from typer.testing import CliRunner

from emodebias.cli import app
from emodebias.data.manifest import Manifest
from emodebias.groups import GroupAssignment
from emodebias.groups.diagnostics import diagnose

ATTRS = ("gender", "age_group", "race")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    res = CliRunner().invoke(app, ["-q", "demo", "--quick", "--workers", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def runs(out: Path) -> list[tuple[Path, dict]]:
    return [(p.parent, json.loads(p.read_text())) for p in sorted(out.glob("runs/*/record.json"))]


def manifest_of(out: Path) -> pd.DataFrame:
    (path,) = (out / "cache" / "manifests").glob("*.parquet")
    return Manifest.load(path).df.set_index("utt_id")


def report_table(out: Path, subsection: str) -> dict:
    data = json.loads((out / "report" / "report.json").read_text())
    (table,) = [t for t in data["tables"] if t["subsection"] == subsection]
    return table


def test_speakers_per_group_are_recorded_and_shown(demo: Path) -> None:
    df = manifest_of(demo)
    expected: dict[tuple[str, str, str], int] = {}  # (attribute, group, fold) -> speakers
    for folder, rec in runs(demo):
        ids = np.load(folder / "predictions.npz")["utt_ids"].astype(str)
        test = df.loc[ids]
        counts = {("all", "all"): test["speaker"].nunique()}
        for a in ATTRS:
            for g, part in test.groupby(a):
                counts[(a, str(g))] = part["speaker"].nunique()
        got = {(r["attribute"], r["group"]): r["value"] for r in rec["metrics"]["table"]
               if r["metric"] == "speakers"}
        assert got == counts  # every group of every attribute, the whole test set too
        fold = str(rec["spec"]["fold"])
        expected.update({(a, g, fold): n for (a, g), n in counts.items()})
    assert {n for (a, _, _), n in expected.items() if a == "gender"} == {1}  # quick demo
    assert expected[("all", "all", "2")] == 2
    table = report_table(demo, "Test set: utterances and speakers per group")
    folds = ["1", "2"]
    assert table["header"][-2:] == [f"speakers, fold {f}" for f in folds]
    shown = {(r[0], r[1]): r[-2:] for r in table["rows"]}
    for (a, g, f), n in expected.items():
        assert shown[(a, g)][folds.index(f)] == str(n), (a, g, f)
    # groups absent from a fold's test set are a dash, not a zero
    absent = {(a, g) for (a, g, _) in expected} - {(a, g) for (a, g, f) in expected if f == "2"}
    assert absent and all(shown[k][1] == "—" for k in absent)


def test_group_sources_table_equals_diagnose_of_the_cached_groups(demo: Path) -> None:
    man = Manifest.load(next((demo / "cache" / "manifests").glob("*.parquet")))
    by_source: dict[str, list[pd.DataFrame]] = {}
    for d in sorted((demo / "cache" / "groups").iterdir()):
        groups = GroupAssignment.load(d)
        fresh = diagnose(groups, man, ATTRS)
        cached = pd.read_csv(d / "diagnostics.csv")  # cached beside the assignment
        assert np.allclose(cached["purity"], fresh["purity"])
        assert np.allclose(cached["nmi"], fresh["nmi"])
        # purity and NMI by hand, from the group ids and the manifest's columns
        values = man.df.set_index("utt_id").loc[groups.utt_ids]
        for a in ATTRS:
            row = fresh[fresh["attribute"] == a].iloc[0]
            tab = pd.crosstab(groups.ids, values[a].to_numpy())
            assert row["purity"] == pytest.approx(tab.max(axis=1).sum() / tab.to_numpy().sum())
            assert row["nmi"] == pytest.approx(normalized_mutual_info_score(
                values[a].astype(str), groups.ids))
        assert fresh["size_min"].iloc[0] == np.bincount(groups.ids).min()
        by_source.setdefault(groups.source, []).append(fresh)
    assert len(by_source["cluster:acoustic:k=4"]) == 2  # fitted once per fold
    # every run that trained on groups records their diagnostics
    for _, rec in runs(demo):
        diag = rec["info"].get("groups_diagnostics")
        assert (diag is None) == (rec["spec"]["groups"] == "none")
    table = report_table(demo, "Group sources")
    assert table["header"][:3] == ["groups", "folds", "k"]
    rows = {r[0]: r for r in table["rows"]}
    for source, cell in (("cluster:acoustic:k=4", "○ cluster k=4 (acoustic)"),
                         ("truth:gender", "● truth:gender")):
        frames = by_source[source]
        folds = {str(r["spec"]["fold"]) for _, r in runs(demo) if r["spec"]["groups"] == source}
        want = [cell, str(len(folds)), str(frames[0]["n_groups"].iloc[0])]
        for a in ATTRS:
            for key in ("purity", "nmi"):
                vals = [f.loc[f["attribute"] == a, key].iloc[0] for f in frames]
                want.append(f"{np.mean(vals):.3f}")
        want.append(str(min(int(f["size_min"].min()) for f in frames)))
        assert rows[cell] == want
    assert rows["● truth:gender"][3:5] == ["1.000", "1.000"]  # truth is gender itself


def test_group_sources_table_skips_old_records() -> None:
    from emodebias.report.html import group_source_rows

    spec = {"groups": "cluster:e:k=2", "fold": "1"}
    head, body = group_source_rows([{"spec": spec, "info": {}}, {"spec": spec}])
    assert body == [] and head[0] == "groups"


# ----------------------------------------------------------------------------- layer weights
GRID = {"name": "layers", "corpus": {"name": "synthetic", "folds": 5, "n_speakers_per_gender": 5,
                                     "utterances_per_emotion": 4, "seconds": [0.5, 0.7]},
        "encoder": "acoustic", "folds": [1, 2], "train": {"epochs": 3},
        "runs": ["erm", {"method": "rw", "groups": "truth:gender"}]}
N_LAYERS = 4


def test_layer_weights_of_a_multi_layer_store_are_recorded_and_drawn(tmp_path,
                                                                     monkeypatch) -> None:
    """A grid on a 4-layer store: each record holds the selected epoch's normalised layer
    weights, equal to the softmax of the saved head's mix parameter; the report draws them."""
    from emodebias.bench import pipeline
    from emodebias.features.store import FeatureStore

    real = pipeline.spec_features

    def layered(spec, manifest, cache, encoder=None, progress=False):
        """The grid's own store, widened to N_LAYERS layers (a stand-in for an SSL encoder)."""
        one = real(spec, manifest, cache, encoder, progress)
        path = Path(cache) / "layered"
        if not (path / "meta.json").is_file():
            x = np.asarray(one.features, dtype=np.float32)
            rng = np.random.default_rng(0)
            layers = [x * s + rng.normal(0, 0.1, x.shape) for s in (1.0, 0.5, 0.0, 2.0)]
            path.mkdir(parents=True)
            np.save(path / "features.npy", np.concatenate(layers, axis=1).astype(np.float16))
            meta = {**one.meta, "n_layers": N_LAYERS, "key": one.meta.get("key", "") + "-l4"}
            (path / "meta.json").write_text(json.dumps(meta))
        return FeatureStore.open(path)

    monkeypatch.setattr(pipeline, "spec_features", layered)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["-q", "bench", str(grid), "-o", str(out), "--workers", "1"])
    assert res.exit_code == 0, res.output
    found = runs(out)
    assert len(found) == 4
    for folder, rec in found:
        w = np.asarray(rec["info"]["layer_weights"])
        assert w.shape == (N_LAYERS,) and w.sum() == pytest.approx(1.0, abs=1e-9)
        state = torch.load(folder / "model" / "head.pt", weights_only=True)
        param = state[rec["info"]["layer_weights_param"]]
        assert param.shape == (1, N_LAYERS)
        assert np.allclose(w, torch.softmax(param[0].double(), -1).numpy(), atol=1e-9)
        assert not np.allclose(w, 1 / N_LAYERS, atol=1e-4)  # learned, not the initial uniform
    res = CliRunner().invoke(app, ["-q", "report", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report" / "report.md").read_text()
    assert "Learned layer weights" in md and "layer_weights_0.png" in md
    png = out / "report" / "figures" / "layer_weights_0.png"
    assert png.stat().st_size > 10_000
    from emodebias.report.plots import layer_weight_means

    means = layer_weight_means([rec for _, rec in found])
    assert set(means) == {"ERM –", "RW ● truth:gender"}
    erm = [np.asarray(r["info"]["layer_weights"]) for _, r in found if r["spec"]["method"] == "erm"]
    assert np.allclose(means["ERM –"], np.mean(erm, axis=0))


def test_single_layer_runs_record_no_layer_weights(demo: Path) -> None:
    """The demo's acoustic features have one layer: no weights, no figure (old records alike)."""
    assert all("layer_weights" not in rec["info"] for _, rec in runs(demo))
    assert "Learned layer weights" not in (demo / "report" / "report.md").read_text()
