"""`emodebias groups` / `train-probe` end to end on a tiny tone corpus with an acoustic store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from emodebias.cli import app
from emodebias.data.manifest import Manifest
from emodebias.groups import GroupAssignment
from emodebias.groups.tsne import tsne_coords, tsne_figure

SR = 16_000


def _tone(f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.5 * SR)) / SR
    wav = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 5))
    return (0.2 * wav + 0.01 * rng.normal(size=len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 speakers (6 F at ~220 Hz, 6 M at ~115 Hz), 3 utterances each, folds, acoustic store."""
    from emodebias.data.splits import make_folds
    from emodebias.features.encoders import get_encoder
    from emodebias.features.store import extract

    root = tmp_path_factory.mktemp("tones")
    rows = []
    for s in range(12):
        gender = "F" if s % 2 else "M"
        for u in range(3):
            f0 = (220.0 if gender == "F" else 115.0) * (1 + 0.04 * (s // 2 - 2)) * (1 + 0.02 * u)
            path = root / f"s{s:02d}_{u}.wav"
            sf.write(path, _tone(f0, 10 * s + u), SR)
            rows.append({"utt_id": path.stem, "path": str(path), "speaker": f"s{s:02d}",
                         "gender": gender, "age_group": "Young" if s < 6 else "Middle",
                         "soft_angry": 0.97 if u else 0.03, "soft_sad": 0.03 if u else 0.97})
    manifest = make_folds(Manifest(pd.DataFrame(rows), ["angry", "sad"]), k=3)
    mpath = manifest.save(root / "manifest.parquet")
    store = extract(manifest, get_encoder("acoustic"), root / "store", progress=False)
    return mpath, store


def _run(*args: str):
    result = CliRunner().invoke(app, ["groups", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_truth_intersections_with_split(corpus, tmp_path):
    mpath, _ = corpus
    out = tmp_path / "truth"
    result = _run("--manifest", str(mpath), "--source", "truth", "--column", "gender,age_group",
                  "--split", "1", "--out", str(out))
    a = GroupAssignment.load(out / "truth_gender+age_group")
    assert a.n_groups == 4 and (a.ids >= 0).all()
    table = pd.read_csv(out / "diagnostics.csv").set_index("attribute")
    assert table.loc["gender", "purity"] == 1.0 and table.loc["age_group", "purity"] == 1.0
    assert table.loc["gender", "hungarian_acc"] == 0.5  # 4 groups onto 2 values, one-to-one
    assert "race" not in table.index and "group diagnostics" in result.output


def test_pseudo_f0_and_probe(corpus, tmp_path):
    mpath, store = corpus
    result = _run("--manifest", str(mpath), "--source", "pseudo", "--model", "f0",
                  "--out", str(tmp_path / "f0"))
    assert "accuracy vs gender 1.000" in result.output
    probe = tmp_path / "probe.npz"
    trained = CliRunner().invoke(app, ["train-probe", "--features", str(store.path),
                                       "--manifest", str(mpath), "--out", str(probe)])
    assert trained.exit_code == 0, trained.output
    assert "leave-speakers-out accuracy" in trained.output and probe.is_file()
    _run("--manifest", str(mpath), "--features", str(store.path), "--source", "pseudo",
         "--model", str(probe), "--out", str(tmp_path / "probe"))
    a = GroupAssignment.load(tmp_path / "probe" / "pseudo_probe_acoustic")
    assert a.names == ["F", "M"] and a.probs.shape == (36, 2) and a.info["accuracy"] == 1.0


def test_clusters_cached_beside_store_with_tsne(corpus, tmp_path):
    mpath, store = corpus
    out = tmp_path / "clusters"
    result = _run("--manifest", str(mpath), "--features", str(store.path), "--source", "cluster",
                  "--k", "2,3", "--split", "1", "--algorithm", "kmeans", "--tsne",
                  "--out", str(out))
    table = pd.read_csv(out / "diagnostics.csv")
    assert sorted(table["n_groups"].unique()) == [2, 3]
    for k in (2, 3):
        a = GroupAssignment.load(out / f"cluster_acoustic_k{k}")
        assert a.info["n_fit"] == 24 and len(a.ids) == 36  # fitted on train+dev, all assigned
        sizes = pd.read_csv(out / f"cluster_acoustic_k{k}" / "sizes.csv")
        assert sizes["n"].sum() == 36 and sizes["n_train"].sum() == 12
        assert (out / f"tsne_cluster_acoustic_k{k}.png").read_bytes()[:4] == b"\x89PNG"
    cached = list((store.path / "groups").iterdir())
    assert len(cached) >= 2 and "t-SNE figure" in result.output


def test_cli_errors_are_clear(corpus, tmp_path):
    mpath, _ = corpus

    def error(*args: str) -> str:
        result = CliRunner().invoke(app, ["groups", "--manifest", str(mpath), *args])
        assert result.exit_code == 2, result.output + repr(result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]

    assert "--features" in error("--source", "cluster", "--out", str(tmp_path))
    assert "truth" in error("--source", "magic", "--out", str(tmp_path))
    assert "no column(s) ['dialect']" in error("--source", "truth", "--column", "dialect",
                                              "--out", str(tmp_path / "d"))
    assert "fold of the manifest (folds: 1, 2, 3)" in error(
        "--source", "truth", "--split", "7", "--out", str(tmp_path / "s"))
    (tmp_path / "afile").write_text("x")
    assert "is a file" in error("--source", "truth", "--out", str(tmp_path / "afile"))
    odd = tmp_path / "[/x]" / "store"  # brackets are printed as they are, never as markup
    assert f"{odd}: no such file or folder" in error(
        "--source", "cluster", "--features", str(odd), "--out", str(tmp_path / "c"))


def test_groups_prints_what_it_wrote_and_train_finds_it(corpus, tmp_path):
    """`groups --out DIR` writes DIR/<source>/; its output names them, and `train --groups DIR`
    takes DIR when it holds one assignment (the README's pipeline)."""
    mpath, store = corpus
    out = tmp_path / "groups" / "truth"
    result = _run("--manifest", str(mpath.parent), "--source", "truth", "--out", str(out))
    assert f"wrote {out / 'truth_gender'} (truth:gender, 2 groups)" in result.stdout
    assert f"wrote {out / 'diagnostics.csv'}" in result.stdout
    assert GroupAssignment.load(out / "truth_gender").manifest_hash is not None
    run = tmp_path / "run"
    trained = CliRunner().invoke(app, ["train", "--features", str(store.path), "--manifest",
                                       str(mpath), "--split", "1", "--method", "rw", "--groups",
                                       str(out), "--epochs", "2", "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    assert json.loads((run / "record.json").read_text())["spec"]["groups"] == "truth:gender"


def test_tsne_settings_and_figure(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (10, 5)), rng.normal(8, 1, (10, 5))])
    xy = tsne_coords(x)  # n = 20: perplexity 40 clipped to 19/3
    assert xy.shape == (20, 2)
    np.testing.assert_array_equal(xy, tsne_coords(x))  # random_state 42: reproducible
    a = GroupAssignment([f"u{i}" for i in range(20)], np.repeat([0, 1], 10), ["c0", "c1"], "c")
    # the two blobs stay apart in 2-D: every point is nearer its own cluster's centroid
    cents = np.stack([xy[a.ids == g].mean(0) for g in (0, 1)])
    assert (np.linalg.norm(xy[:, None] - cents[None], axis=-1).argmin(1) == a.ids).all()
    png = tsne_figure(x, a, tmp_path / "fig.png", genders=["F", "M"] * 10, coords=xy)
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    with pytest.raises(ValueError, match="genders"):
        tsne_figure(x, a, tmp_path / "bad.png", genders=["F"] * 3, coords=xy)
