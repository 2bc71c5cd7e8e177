"""Grid files -> RunSpecs: expansion counts, normalisation, hashes, and clear errors; the
run-time settings (device, reused feature stores) that stay out of run identities."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from emodebias.bench import pipeline
from emodebias.bench.grid import (
    GridError,
    RunSpec,
    expand_grid,
    load_grid,
    parse_ratio,
    preset_names,
)
from emodebias.cli import app

BASE = {"corpus": "synthetic", "encoder": "acoustic", "folds": [1, 2], "ratios": ["1:20"],
        "cluster_encoder": "acoustic", "pseudo_model": "pm"}


def test_expansion_counts_and_normalisation() -> None:
    grid = {**BASE, "directions": ["both"], "seeds": [0, 1],
            "runs": [{"method": "erm"},
                     {"method": ["rw", "gdro"], "groups": ["truth", "pseudo", "cluster:k=4"]},
                     {"method": "gdro", "groups": "truth", "hparams": {"eta_q": [0.01, 0.1]}}]}
    specs = expand_grid(grid)
    axes = 2 * 1 * 2 * 2  # folds × ratios × directions × seeds
    assert len(specs) == axes * (1 + 2 * 3 + 2)
    groups = {s.groups for s in specs}
    assert groups == {"none", "truth:gender", "pseudo:pm", "cluster:acoustic:k=4"}
    assert {s.direction for s in specs} == {"female-major", "male-major"}
    assert {s.ratio for s in specs} == {20.0}
    assert {s.fold for s in specs} == {"1", "2"}
    assert {tuple(sorted(s.hparams.items())) for s in specs if s.hparams} == {
        (("eta_q", 0.01),), (("eta_q", 0.1),)}
    assert len({s.hash for s in specs}) == len(specs)


def test_hash_is_content_based_and_names_are_readable() -> None:
    a = RunSpec(corpus="synthetic", fold="1", ratio=20.0, groups="truth:gender", method="rw")
    b = RunSpec.from_dict(a.to_dict())
    assert a.hash == b.hash and len(a.hash) == 12
    assert RunSpec(corpus="synthetic", fold="1", ratio=20.0, groups="truth:gender",
                   method="rw", seed=1).hash != a.hash
    assert a.name == "synthetic.acoustic.f1.1-20.natural.truth-gender.rw.s0"
    # runs that share a split/features/groups share a batch key, whatever their method or seed
    c = RunSpec(corpus="synthetic", fold="1", ratio=20.0, groups="truth:gender", method="gdro",
                seed=3)
    assert c.batch_key == a.batch_key
    assert RunSpec(corpus="synthetic", fold="2", ratio=20.0, groups="truth:gender",
                   method="rw").batch_key != a.batch_key


@pytest.mark.parametrize("value, expected", [("1:20", 20.0), (5, 5.0), ("2:10", 5.0),
                                             ("full", None), (None, None)])
def test_parse_ratio(value, expected) -> None:
    assert parse_ratio(value) == expected


@pytest.mark.parametrize("grid, message", [
    ({"runs": [{"method": "erm"}], "folds": [1]}, "no corpus"),
    ({**BASE, "runs": []}, "non-empty list"),
    ({**BASE, "runs": [{"method": "nope"}]}, "unknown method 'nope'"),
    ({**BASE, "runs": [{"method": "rw"}]}, "needs training groups"),
    ({**BASE, "runs": [{"method": "erm", "groups": "truth"}]}, "uses no groups"),
    ({**BASE, "runs": [{"method": "erm", "lr": 1}]}, "runs[0]: unknown key(s) ['lr']"),
    ({**BASE, "ratioz": [1], "runs": ["erm"]}, "unknown top-level key(s) ['ratioz']"),
    ({**BASE, "ratios": ["1:0.5"], "runs": ["erm"]}, "r >= 1"),
    ({**BASE, "ratios": ["abc"], "runs": ["erm"]}, "bad ratio 'abc'"),
    ({**BASE, "directions": ["up"], "runs": ["erm"]}, "unknown direction 'up'"),
    ({**BASE, "runs": [{"method": "rw", "groups": "cluster:k=1"}]}, "k must be >= 2"),
    ({**BASE, "runs": [{"method": "rw", "groups": "kmeans"}]}, "unknown group source"),
    ({**BASE, "runs": ["erm", "erm"]}, "duplicates one from runs[0]"),
    ({**BASE, "train": {"epoch": 3}, "runs": ["erm"]}, "unknown train setting(s) ['epoch']"),
    ({**BASE, "corpus": {"name": "x", "root": "${data}/y"}, "runs": ["erm"]}, "${data}"),
])
def test_bad_grids_raise_clear_errors(grid, message) -> None:
    with pytest.raises(GridError) as err:
        expand_grid(grid, source="g.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("g.yaml: ")


def test_variables_and_files(tmp_path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**BASE, "variables": {"data": "/d"},
                                    "corpus": {"name": "table", "root": "${data}/c"},
                                    "runs": ["erm"]}))
    specs = load_grid(path)
    assert specs[0].corpus == "table" and specs[0].corpus_opts == {"root": "/d/c"}
    assert load_grid(path, {"data": "/e"})[0].corpus_opts == {"root": "/e/c"}
    with pytest.raises(GridError, match="does not exist"):
        load_grid(tmp_path / "missing.yaml")
    with pytest.raises(GridError, match="neither a grid file nor a preset"):
        load_grid("no-such-preset")


def test_presets_expand_to_the_papers_grids() -> None:
    assert {"idi-table1", "idi-table2", "idi-k-sweep", "emo-debias", "demo"} <= set(preset_names())
    t1 = load_grid("idi-table1", {"labels": "/l", "audio": "/a", "gender_model": "/g"})
    # 17 rows of IDI Table 1 (ERM, Random, LfF, DisEnt, PGDRO, 4 methods × 3 sources) × 5 folds
    assert len(t1) == 17 * 5
    assert {s.ratio for s in t1} == {20.0}
    assert {s.groups for s in t1 if s.method == "rw"} == {
        "truth:gender", "pseudo:/g", "cluster:resemblyzer:k=16"}
    t2 = load_grid("idi-table2", {"labels": "/l", "audio": "/a"})
    assert {s.groups.split("k=")[-1] for s in t2 if s.method != "erm"} == {"16", "32"}
    assert len(t2) == (1 + 4 * 2) * 5
    ks = load_grid("idi-k-sweep", {"labels": "/l", "audio": "/a"})
    assert sorted({int(s.groups.split("k=")[1]) for s in ks if "k=" in s.groups}) == [
        2, 4, 8, 16, 32]
    ed = load_grid("emo-debias", {"labels": "/l", "audio": "/a"})
    assert {s.ratio for s in ed} == {1.0, 5.0, 10.0, 20.0, 40.0}
    assert {s.direction for s in ed} == {"female-major", "male-major"}
    assert {s.fold for s in ed} == {"1", "2", "3", "4", "5"}
    assert len(ed) % (5 * 2 * 5) == 0
    demo = load_grid("demo")
    assert {s.corpus for s in demo} == {"synthetic"}
    assert any(s.groups.startswith("cluster:") for s in demo)
    assert any(s.groups.startswith("truth:") for s in demo)


# ----------------------------------------------------------------------------- run-time settings
def test_device_is_a_runtime_setting_outside_the_hash() -> None:
    runs = ["erm", {"method": "rw", "groups": "cluster:k=4"}]
    plain = expand_grid({**BASE, "runs": runs})
    assert {s.device for s in plain} == {"cpu"}
    for variant in ({"device": "cuda"}, {"encoder": {"name": "acoustic", "device": "cuda:1"}},
                    {"train": {"device": "cuda", "epochs": 3}}):
        specs = expand_grid({**BASE, **variant, "runs": runs})
        assert {s.device for s in specs} == {variant.get("device", "cuda:1" if "encoder" in
                                                     variant else "cuda")}
        assert all("device" not in s.encoder_opts and "device" not in s.train for s in specs)
        if "train" not in variant:  # the same runs: same hashes, batch cells per device
            assert [s.hash for s in specs] == [s.hash for s in plain]
            assert {s.batch_key for s in specs}.isdisjoint({s.batch_key for s in plain})
        back = RunSpec.from_dict(specs[0].to_dict())
        assert back.device == specs[0].device and back.hash == specs[0].hash
    assert "device" not in plain[0].to_dict()  # records of CPU runs are unchanged
    with pytest.raises(GridError, match="conflicting devices"):
        expand_grid({**BASE, "device": "cuda", "train": {"device": "cpu"}, "runs": runs})
    with pytest.raises(GridError, match="device must be cpu, cuda, cuda:N or mps, got 'gpu'"):
        expand_grid({**BASE, "device": "gpu", "runs": runs})


def test_features_key_names_existing_stores(tmp_path) -> None:
    store = tmp_path / "feats"
    store.mkdir()
    (store / "meta.json").write_text("{}")
    runs = ["erm", {"method": "rw", "groups": "cluster:resemblyzer:k=4"}]
    specs = expand_grid({**BASE, "features": {"resemblyzer": str(store)}, "runs": runs})
    assert [s.features for s in specs if s.method == "erm"] == [{}] * 2
    assert {json.dumps(s.features) for s in specs if s.method == "rw"} == {
        json.dumps({"resemblyzer": str(store.resolve())})}
    assert [s.hash for s in specs] == [s.hash for s in expand_grid({**BASE, "runs": runs})]
    one = expand_grid({**BASE, "features": str(store), "runs": ["erm"]})
    assert one[0].features == {"acoustic": str(store.resolve())}
    for value, message in ((str(tmp_path / "none"), "is not a feature store"),
                           ({"wavlm": str(store)}, "no run reads encoder 'wavlm'"),
                           (3, "features must be a store path")):
        with pytest.raises(GridError, match=message):
            expand_grid({**BASE, "features": value, "runs": runs})


TINY = {"name": "tiny", "corpus": {"name": "synthetic", "folds": 5, "n_speakers_per_gender": 5,
                                   "utterances_per_emotion": 4, "seconds": [0.5, 0.7]},
        "encoder": "acoustic", "folds": [1], "train": {"epochs": 2}, "runs": ["erm"]}


def tiny_grid(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **extra}))
    return path


def test_device_reaches_the_encoder_and_never_the_cache_key(tmp_path, monkeypatch) -> None:
    import emodebias.features.store
    from emodebias.features.encoders.acoustic import AcousticEncoder

    moved: list[str] = []
    monkeypatch.setattr(AcousticEncoder, "to", lambda self, d: moved.append(d) or self,
                        raising=False)
    spec = load_grid(tiny_grid(tmp_path))[0]
    cache = tmp_path / "cache"
    manifest = pipeline.stage_manifest(spec, cache)
    on_gpu = pipeline.spec_features(replace(spec, device="cuda:1"), manifest, cache)
    assert moved == ["cuda:1"]

    def no_extraction(*args, **kwargs):
        raise AssertionError("the CPU spec must reuse the store the cuda spec made")

    monkeypatch.setattr(emodebias.features.store, "extract", no_extraction)
    on_cpu = pipeline.spec_features(spec, manifest, cache)
    assert on_cpu.path == on_gpu.path and on_cpu.key == on_gpu.key
    assert len([p for p in (cache / "features").iterdir() if p.is_dir()]) == 1


def test_bench_device_option_reaches_the_encoder(tmp_path, monkeypatch) -> None:
    import emodebias.features.encoders.base
    from emodebias.errors import UserError
    from emodebias.features.encoders.acoustic import AcousticEncoder

    def reached(self, device):
        raise UserError(f"encoder moved to {device}")

    monkeypatch.setattr(emodebias.features.encoders.base, "check_device", lambda d, *a, **k: d)
    monkeypatch.setattr(AcousticEncoder, "to", reached, raising=False)
    res = CliRunner().invoke(app, ["bench", str(tiny_grid(tmp_path)), "-o", str(tmp_path / "o"),
                                   "--device", "cuda:3"])
    assert res.exit_code == 2 and "error: encoder moved to cuda:3" in res.stderr, res.output


def test_a_grid_reuses_an_extracted_store(tmp_path) -> None:
    """`features: ${feats}` + `--var feats=DIR`: the grid trains on the user's store (checked
    against its manifest and encoder) instead of extracting; a store that does not fit is a
    one-line error before any run."""
    plain = load_grid(tiny_grid(tmp_path))[0]
    out = tmp_path / "out"  # the synthetic corpus lives in the grid's cache: make it there
    manifest = pipeline.stage_manifest(plain, out / "cache")
    manifest_file = str(out / "cache" / "manifests" / f"{plain.corpus_key}.parquet")
    feats, cropped = tmp_path / "feats", tmp_path / "cropped"
    for store, extra in ((feats, []), (cropped, ["--max-seconds", "0.4"])):
        res = CliRunner().invoke(app, ["-q", "extract", "-m", manifest_file, "-o", str(store),
                                       *extra])
        assert res.exit_code == 0, res.output
    grid = tiny_grid(tmp_path, features="${feats}")
    res = CliRunner().invoke(app, ["bench", str(grid), "-o", str(out), "--var", f"feats={feats}"])
    assert res.exit_code == 0, res.output
    (record,) = [json.loads(p.read_text()) for p in out.glob("runs/*/record.json")]
    assert record["hash"] == plain.hash  # the same run as one that extracts its own features
    assert record["spec"]["features"] == {"acoustic": str(feats.resolve())}
    assert not [p for p in (out / "cache" / "features").iterdir() if p.is_dir()]
    assert json.loads((feats / "meta.json").read_text())["manifest_hash"] == \
        manifest.content_hash()

    fresh = tmp_path / "fresh"  # a new grid folder with the same corpus manifest
    shutil.copytree(out / "cache" / "manifests", fresh / "cache" / "manifests")
    res = CliRunner().invoke(app, ["bench", str(grid), "-o", str(fresh), "--var",
                                   f"feats={cropped}"])
    assert res.exit_code == 2 and "extract it with --max-seconds 10" in res.stderr, res.output
    other = tiny_grid(tmp_path, features="${feats}", corpus={**TINY["corpus"], "seed": 1})
    res = CliRunner().invoke(app, ["bench", str(other), "-o", str(tmp_path / "o3"), "--var",
                                   f"feats={feats}"])
    assert res.exit_code == 2, res.output
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert line.startswith("error: grid features for 'acoustic': ") and "manifest" in line
    assert not list((tmp_path / "o3").glob("runs/*"))


def test_grid_stages_extract_with_progress_unless_quiet(tmp_path, monkeypatch) -> None:
    """The grid's shared stages run first, in this process: extraction draws its bar when the
    process switch is on (the CLI without -q) and stays silent otherwise."""
    import emodebias.features.store
    from emodebias import progress

    seen: list[bool] = []
    real = emodebias.features.store.extract

    def spy(*args, **kwargs):
        seen.append(kwargs["progress"])
        return real(*args, **kwargs)

    monkeypatch.setattr(emodebias.features.store, "extract", spy)
    specs = load_grid(tiny_grid(tmp_path))
    try:
        progress.set_enabled(True)
        pipeline.prepare_stages(specs, tmp_path / "loud")
        progress.set_enabled(False)
        pipeline.prepare_stages(specs, tmp_path / "quiet")
    finally:
        progress.set_enabled(False)
    assert seen == [True, False]
    assert (tmp_path / "quiet" / "cache" / "manifests" / f"{specs[0].corpus_key}.parquet").is_file()
