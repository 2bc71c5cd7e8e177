"""`emodebias audit`: an existing model run over EmoDB, its predictions against a direct
transformers forward pass, a planted pitch bias found, resumable inference, comparisons, and
every refusal as one `error:` line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import one_error_line
from typer.testing import CliRunner

import emodebias as ed
from emodebias.auditing import audit
from emodebias.auditing.core import work_dir
from emodebias.bench.results import collect_frame, load_predictions, read_record
from emodebias.cli import app
from emodebias.data.manifest import Manifest

SR = 16_000
MODEL_CLASSES = ["ang", "sad", "neutral", "Happy", "surprise"]  # 'ang' needs a map, 'Happy' not
MAP = {"ang": "angry"}


@pytest.fixture(scope="module")
def emodb_sub(shared_data, tmp_path_factory) -> tuple[Manifest, Path]:
    """EmoDB, 6 utterances per speaker (60 files, 10 speakers, 5 per gender), saved."""
    from emodebias.data.corpora import emodb

    full = emodb.load(shared_data / "emodb")
    df = full.df.groupby("speaker", sort=True).head(6).reset_index(drop=True)
    man = Manifest(df, full.classes, full.corpus)
    path = man.save(tmp_path_factory.mktemp("emodb_audit") / "manifest.parquet")
    return man, path


def _save_tiny(path: Path, cls: str = "Wav2Vec2ForSequenceClassification", seed: int = 0,
               labels: list[str] = MODEL_CLASSES) -> Path:
    """A tiny random wav2vec2 classifier (group-norm front end) + feature extractor."""
    import transformers
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, conv_dim=(16, 16), conv_stride=(5, 4),
                         conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2, classifier_proj_size=8,
                         id2label=dict(enumerate(labels)),
                         label2id={c: i for i, c in enumerate(labels)})
    model = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():  # random heads are nearly flat: spread the logits
        for name, p in model.named_parameters():
            if name.startswith(("classifier", "projector")):
                p.mul_(40)
    model.save_pretrained(path)
    Wav2Vec2FeatureExtractor(sampling_rate=SR, do_normalize=True,
                             return_attention_mask=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny-ser")


def _direct(path: Path, files: list[str]) -> np.ndarray:
    """The checkpoint's softmax per file through plain transformers, one file at a time."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from emodebias.data.audio import load_audio

    fe = AutoFeatureExtractor.from_pretrained(path)
    model = AutoModelForAudioClassification.from_pretrained(path).eval()
    rows = []
    for f in files:
        inputs = fe(load_audio(f, SR, 10.0), sampling_rate=SR, return_tensors="pt")
        with torch.inference_mode():
            rows.append(model(**inputs).logits.softmax(-1)[0].double().numpy())
    return np.array(rows)


# ----------------------------------------------------------------------------- HF checkpoint
def test_hf_audit_equals_a_direct_forward_pass(tiny, emodb_sub, tmp_path) -> None:
    man, man_path = emodb_sub
    res = audit(tiny, man_path, out=tmp_path / "a", class_map=MAP, drop=["surprise"],
                batch_size=7, n_boot=50, n_perm=50, show_progress=False)
    pred = load_predictions(res.path)
    assert list(pred["utt_ids"]) == list(man.utt_ids)  # every file, manifest order
    raw = _direct(tiny, list(man.df["path"]))
    # the stated rule by hand: sum per corpus class, 'surprise' dropped, renormalise
    expect = np.zeros((len(man), len(man.classes)))
    for j, c in enumerate(["angry", "sad", "neutral", "happy"]):
        expect[:, man.classes.index(c)] = raw[:, j]
    expect /= expect.sum(1, keepdims=True)
    delta = np.abs(pred["probs"] - expect).max()
    assert delta < 1e-5, delta
    assert pred["probs"].std(0).max() > 0.01  # the outputs really vary between files
    rec = read_record(res.path)
    assert rec["kind"] == "audit" and rec["spec"]["method"] == "audit"
    assert rec["name"] == "tiny-ser" and rec["train_config"] is None
    a = rec["info"]["audit"]
    assert a["kind"] == "hf" and a["classes"] == MODEL_CLASSES and a["dropped"] == ["surprise"]
    assert a["class_map"] == {"ang": "angry", "sad": "sad", "neutral": "neutral",
                              "Happy": "happy"}
    assert a["missing_classes"] == ["disgust", "fear", "boredom"]
    assert len(a["hash"]) == 16 and "renormalised" in a["projection_rule"]
    for name in ("gaps.csv", "per_class.csv", "table.csv", "summary.json"):
        assert (res.path / name).is_file()
    assert (res.path / "figures" / "group_rates_gender.png").is_file()
    assert not work_dir(res.path).exists()  # partial work removed once committed

    # `evaluate` reads the audit folder like any run and gets the same scores
    cli = CliRunner().invoke(app, ["evaluate", "-p", str(res.path), "-m", str(man_path),
                                   "--n-boot", "50", "--n-perm", "50"])
    assert cli.exit_code == 0, cli.output
    assert f"macro_f1     {rec['metrics']['summary']['macro_f1']:.4f}" in cli.output
    # a different batch size gives the same predictions (padding-exact batches)
    again = audit(tiny, man_path, out=tmp_path / "b", class_map=MAP, drop=["surprise"],
                  batch_size=4, n_boot=0, n_perm=0, show_progress=False)
    np.testing.assert_allclose(load_predictions(again.path)["probs"], pred["probs"], atol=1e-6)


def test_cli_audit_prints_the_report_and_collect_and_report_read_it(tiny, emodb_sub,
                                                                      tmp_path) -> None:
    from emodebias.report.html import write_report

    _, man_path = emodb_sub
    out = tmp_path / "audits" / "tiny"
    res = CliRunner().invoke(app, ["-q", "audit", "--model", str(tiny), "-m", str(man_path),
                                   "-o", str(out), "--map", "ang=angry", "--drop", "surprise",
                                   "--n-boot", "50", "--n-perm", "50"])
    assert res.exit_code == 0, res.output
    assert "corpus classes the model lacks (probability 0): disgust, fear, boredom" in res.output
    assert "[gender]" in res.output and f"wrote {out}" in res.output
    tidy = collect_frame(tmp_path / "audits")
    assert set(tidy["method"]) == {"audit"} and set(tidy["kind"]) == {"audit"}
    rep = write_report(tidy, tmp_path / "report")
    text = rep.markdown.read_text()
    assert "audit: tiny-ser" in text and "train_config" not in text


# ----------------------------------------------------------------------------- planted bias
def _pitch_model(waves: list[np.ndarray]) -> np.ndarray:
    """Says 'angry' for high voices and 'sad' for low ones, whatever the emotion."""
    from emodebias.groups.f0 import median_f0

    out = np.full((len(waves), 7), 0.02)
    for i, w in enumerate(waves):
        out[i, 0 if median_f0(w, SR) > 160 else 1] = 0.88
    return out


def _flat_model(waves: list[np.ndarray]) -> np.ndarray:
    return np.tile(np.linspace(1, 2, 7), (len(waves), 1))


def test_planted_pitch_bias_shows_a_gender_gap_and_a_flat_model_none(emodb_sub,
                                                                      tmp_path) -> None:
    man, man_path = emodb_sub
    run = ed.audit(_pitch_model, man_path, out=tmp_path / "pitch", classes=man.classes,
                   n_boot=300, n_perm=300, show_progress=False)
    gaps = pd.read_csv(run.path / "gaps.csv").set_index(["attribute", "metric"])
    fpr = gaps.loc[("gender", "fpr_gap")]
    assert fpr["status"] == "ok" and fpr["ci_low"] > 0.05, fpr
    assert fpr["p_perm"] < 0.05, fpr
    assert run.record["info"]["audit"]["kind"] == "callable"
    flat = audit(_flat_model, man, out=tmp_path / "flat", classes=man.classes, n_boot=100,
                 n_perm=100, show_progress=False)
    g = flat.metrics.gaps.set_index(["attribute", "metric"]).loc[("gender", "fpr_gap")]
    assert g["value"] == 0 and not g["p_perm"] < 0.05


# ----------------------------------------------------------------------------- resume
class _Flaky:
    """The pitch model, counting the waveforms it sees; raises after `fail_after` batches."""

    def __init__(self, fail_after: int | None) -> None:
        self.fail_after, self.batches, self.seen = fail_after, 0, 0

    def __call__(self, waves: list[np.ndarray]) -> np.ndarray:
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.batches += 1
        self.seen += len(waves)
        return _pitch_model(waves)


def test_an_interrupted_audit_resumes_without_redoing_work(emodb_sub, tmp_path) -> None:
    man, _ = emodb_sub
    kw = {"classes": man.classes, "batch_size": 8, "n_boot": 0, "n_perm": 0,
          "show_progress": False, "name": "pitch"}
    first = _Flaky(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        audit(first, man, out=tmp_path / "r", **kw)
    assert not (tmp_path / "r").exists()
    assert len(list(work_dir(tmp_path / "r").glob("chunk-*.npz"))) == 3
    second = _Flaky(fail_after=None)
    res = audit(second, man, out=tmp_path / "r", **kw)
    assert second.seen == len(man) - 3 * 8  # the three saved batches were not redone
    whole = audit(_Flaky(None), man, out=tmp_path / "whole", **kw)
    a, b = load_predictions(res.path), load_predictions(whole.path)
    assert list(a["utt_ids"]) == list(b["utt_ids"])
    np.testing.assert_array_equal(a["probs"], b["probs"])
    assert read_record(res.path)["hash"] == read_record(whole.path)["hash"]
    # other settings (batch size) make another job: the stale work is discarded, not mixed in
    with pytest.raises(KeyboardInterrupt):
        audit(_Flaky(fail_after=1), man, out=tmp_path / "s", **kw)
    redo = _Flaky(None)
    audit(redo, man, out=tmp_path / "s", **{**kw, "batch_size": 5})
    assert redo.seen == len(man)


# ----------------------------------------------------------------------------- compare
def test_compare_two_models_on_the_same_utterances(tiny, emodb_sub, tmp_path) -> None:
    man, man_path = emodb_sub
    kw = {"n_boot": 0, "n_perm": 0, "show_progress": False}
    audit(tiny, man_path, out=tmp_path / "hf", class_map=MAP, drop=["surprise"], **kw)
    audit(_pitch_model, man_path, out=tmp_path / "pitch", classes=man.classes, **kw)
    res = CliRunner().invoke(app, ["audit", "--compare", str(tmp_path / "hf"),
                                   str(tmp_path / "pitch"), "--n-perm", "60", "-o",
                                   str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "baseline tiny-ser" in res.output and "gender.fpr_gap" in res.output
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    hf = table[table["model"] == "tiny-ser"].set_index("metric")["value"]
    rec = read_record(tmp_path / "hf")["metrics"]["summary"]
    assert hf["macro_f1"] == pytest.approx(rec["macro_f1"])
    assert hf["gender.fpr_gap"] == pytest.approx(rec["gender.fpr_gap"])
    other = table[table["model"] == "_pitch_model"].set_index("metric")
    assert (other["p"] >= 1 / 61).all() and (other["p_holm"] >= other["p"] - 1e-12).all()
    # a model against itself: no difference, p = 1
    same = ed.compare(tmp_path / "pitch", tmp_path / "pitch", n_perm=20)
    rows = same.table[same.table["model"] == same.names[1]]
    assert (rows["diff"].abs() < 1e-12).all() and (rows["p"] == 1).all()
    # different utterance sets are refused, naming the counts
    sub = Manifest(man.df.iloc[:30].reset_index(drop=True), man.classes, man.corpus)
    audit(_flat_model, sub, out=tmp_path / "part", classes=man.classes, **kw)
    res = CliRunner().invoke(app, ["audit", "--compare", str(tmp_path / "hf"),
                                   str(tmp_path / "part"), "-m", str(man_path)])
    assert "(60 utterances)" in one_error_line(res) and "(30)" in res.stderr


# ----------------------------------------------------------------------------- refusals
def _audit_cli(model: Path, man_path: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["audit", "--model", str(model), "-m", str(man_path),
                                    "-o", str(out), "--n-boot", "0", "--n-perm", "0", *extra])


def test_unmapped_classes_are_one_line_naming_both_sides(tiny, emodb_sub, tmp_path) -> None:
    _, man_path = emodb_sub
    line = one_error_line(_audit_cli(tiny, man_path, tmp_path / "o"))
    assert "model classes ['ang', 'surprise'] match no corpus class" in line
    assert "'Happy'" in line and "'boredom'" in line  # both sides listed
    line = one_error_line(_audit_cli(tiny, man_path, tmp_path / "o", "--map", "angr=angry"))
    assert "['angr']" in line and "model classes" in line
    assert not (tmp_path / "o").exists()


def test_not_a_classifier_rate_mismatch_and_remote_code_are_one_line(tiny, emodb_sub,
                                                                      tmp_path) -> None:
    _, man_path = emodb_sub
    base = _save_tiny(tmp_path / "ssl", cls="Wav2Vec2Model")  # an encoder, no head
    assert "not an audio-classification checkpoint" in one_error_line(
        _audit_cli(base, man_path, tmp_path / "o"))
    assert "--sampling-rate 8000 differs from the model's 16000 Hz" in one_error_line(
        _audit_cli(tiny, man_path, tmp_path / "o", "--sampling-rate", "8000", "--map",
                   "ang=angry", "--drop", "surprise"))
    remote = tmp_path / "remote"
    shutil.copytree(tiny, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForAudioClassification": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    assert "never runs code shipped with a model" in one_error_line(
        _audit_cli(remote, man_path, tmp_path / "o"))
    unknown = tmp_path / "unknown"
    shutil.copytree(tiny, unknown)
    cfg = json.loads((unknown / "config.json").read_text())
    cfg["model_type"] = "evil-audio"
    (unknown / "config.json").write_text(json.dumps(cfg))
    assert "unknown to this transformers" in one_error_line(
        _audit_cli(unknown, man_path, tmp_path / "o"))
    bare = tmp_path / "bare"
    shutil.copytree(tiny, bare)
    (bare / "preprocessor_config.json").unlink()
    assert "no usable feature extractor" in one_error_line(
        _audit_cli(bare, man_path, tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    line = one_error_line(CliRunner().invoke(app, ["groups", "-m", str(man_path), "-s",
                                                   "pseudo", "--model", str(remote), "-o",
                                                   str(tmp_path / "g")]))
    assert "never runs code shipped with a model" in line


def test_trust_remote_code_is_never_enabled() -> None:
    src = Path(__file__).resolve().parents[1] / "src"
    for path in src.rglob("*.py"):
        text = " ".join(path.read_text().split())
        for bad in ("trust_remote_code=True", "\"trust_remote_code\": True",
                    "'trust_remote_code': True"):
            assert bad not in text, path


# ----------------------------------------------------------------------------- run folder
def test_audit_of_a_run_folder_reproduces_its_test_predictions(tmp_path) -> None:
    man = ed.load_corpus("synthetic", tmp_path / "corpus", n_speakers_per_gender=3,
                         utterances_per_emotion=2, folds=3)
    split = ed.make_split(man, 1)
    split.save(tmp_path / "split")
    store = ed.extract(man, "acoustic", tmp_path / "feats", progress=False)
    run = ed.fit(store, man, split, "erm", epochs=2, out=tmp_path / "run")
    res = audit(tmp_path / "run", man, out=tmp_path / "audit", split=tmp_path / "split",
                n_boot=0, n_perm=0, show_progress=False)
    mine = load_predictions(res.path)
    assert sorted(mine["utt_ids"]) == sorted(split.test)
    theirs = run.predictions
    order = {u: i for i, u in enumerate(theirs["utt_ids"])}
    rows = [order[u] for u in mine["utt_ids"]]
    np.testing.assert_allclose(mine["probs"], theirs["probs"][rows], atol=1e-5)
    a = res.record["info"]["audit"]
    assert a["kind"] == "run" and a["method"] == "erm" and a["part"] == "test"


# ----------------------------------------------------------------------------- docs/audit.md
def test_audit_page_runs_as_written(shared_data, tmp_path, monkeypatch) -> None:
    """Every command and snippet of docs/audit.md, run by the tutorials' runner, on EmoDB
    (8 files per speaker) with two tiny checkpoints; outputs checked against the files."""
    from test_tutorials import run_tutorial

    emodb = tmp_path / "emodb" / "wav"
    emodb.mkdir(parents=True)
    for spk in ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16"):
        for f in sorted((shared_data / "emodb" / "wav").glob(f"{spk}*.wav"))[:8]:
            (emodb / f.name).symlink_to(f)
    monkeypatch.setenv("EMODB", str(emodb.parent))
    monkeypatch.setenv("MODEL", str(_save_tiny(tmp_path / "models" / "model-a", seed=1)))
    monkeypatch.setenv("OTHER", str(_save_tiny(tmp_path / "models" / "model-b", seed=2)))
    monkeypatch.chdir(tmp_path)
    page = Path(__file__).resolve().parents[1] / "docs" / "audit.md"
    outcome = run_tutorial(page)
    first = outcome.out("audit", 0)
    assert "corpus classes the model lacks (probability 0): disgust, fear, boredom" in first
    assert "80 of 80 utterances scored" in first
    rec = read_record(Path("work/audits/model-a"))
    f1 = rec["metrics"]["summary"]["macro_f1"]
    assert f"macro_f1     {f1:.4f}" in first and f"macro_f1     {f1:.4f}" in outcome.out(
        "evaluate")
    cmp = outcome.out("audit", 2)
    assert "baseline model-a" in cmp and Path("work/compare/comparison.csv").is_file()
    tidy = pd.read_parquet("work/audits/results.parquet")
    assert set(tidy["method"]) == {"audit"} and tidy["hash"].nunique() == 2  # a, b
    report = Path("work/audits/report/report.md").read_text()
    assert "audit: model-b" in report and "### Audited models" in report
    assert "Training settings" not in report  # audits trained nothing
    gap = float(outcome.printed[0].split("gender FPR gap ")[1].split()[0])
    assert gap == pytest.approx(read_record(Path("work/audits/pitch"))["metrics"]["summary"][
        "gender.fpr_gap"], abs=1e-3) and gap > 0.1
    assert outcome.printed[0].splitlines()[1].startswith("80 utterances, 10 speakers")


def test_padded_batches_equal_single_files(tmp_path) -> None:
    """Files of different lengths share a batch (zero padding, group-norm front end) and still
    give each file's own forward pass."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):
        t = np.arange(int((0.5 + 0.23 * i) * SR)) / SR
        wav = 0.3 * np.sin(2 * np.pi * (110 + 25 * i) * t) + 0.01 * rng.normal(size=t.size)
        sf.write(tmp_path / f"u{i}.wav", wav.astype(np.float32), SR)
        rows.append({"utt_id": f"u{i}", "path": str(tmp_path / f"u{i}.wav"),
                     "speaker": f"s{i}", "soft_sad": 0.5, "soft_angry": 0.5})
    man = Manifest(pd.DataFrame(rows), ["sad", "angry"], "tones")
    ckpt = _save_tiny(tmp_path / "m", labels=["angry", "sad"])
    res = audit(ckpt, man, out=tmp_path / "a", batch_size=4, n_boot=0, n_perm=0,
                show_progress=False, plots=False)
    pred = load_predictions(res.path)
    direct = _direct(ckpt, list(man.df["path"]))[:, ::-1]  # model order angry, sad
    np.testing.assert_allclose(pred["probs"], direct, atol=1e-5)


def test_class_map_from_a_file_pairs_and_drops(tmp_path) -> None:
    from emodebias.auditing import resolve_class_map
    from emodebias.cli.audit import class_map_spec
    from emodebias.data.classmap import ClassMapError

    corpus = ["angry", "sad", "happy"]
    (tmp_path / "map.yaml").write_text("ang: angry\njoy: happy\n")
    spec = class_map_spec([str(tmp_path / "map.yaml")])
    cmap = resolve_class_map(["ang", "SAD", "joy"], corpus, spec)
    assert dict(cmap.mapping) == {"ang": "angry", "joy": "happy", "SAD": "sad"}
    assert class_map_spec(["ang=angry,joy=happy", "x=sad"]) == ["ang=angry", "joy=happy",
                                                                 "x=sad"]
    probs, ok = cmap.project_probs(np.array([[0.2, 0.3, 0.5]]), ["ang", "SAD", "joy"])
    np.testing.assert_allclose(probs, [[0.2, 0.3, 0.5]])
    dropped = resolve_class_map(["ang", "calm"], corpus, ["ang=angry"], drop=["calm"])
    assert dropped.missing_targets(["ang", "calm"]) == ["sad", "happy"]
    with pytest.raises(ClassMapError, match=r"--drop names \['nope'\]"):
        resolve_class_map(["ang"], corpus, ["ang=angry"], drop=["nope"])
    with pytest.raises(ClassMapError, match="not among"):
        resolve_class_map(["ang"], corpus, ["ang=furious"])


def test_part_needs_a_split_and_bad_batch_size_are_one_line(tiny, emodb_sub, tmp_path) -> None:
    _, man_path = emodb_sub
    assert "--part dev needs --split" in one_error_line(
        _audit_cli(tiny, man_path, tmp_path / "o", "--part", "dev"))
    assert "--batch-size must be at least 1" in one_error_line(
        _audit_cli(tiny, man_path, tmp_path / "o", "--batch-size", "0"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert "exists and is not an audit or run folder" in one_error_line(
        _audit_cli(tiny, man_path, tmp_path / "busy", "--map", "ang=angry", "--drop",
                   "surprise"))
    assert "needs --model, --manifest and --out" in one_error_line(
        CliRunner().invoke(app, ["audit", "-m", str(man_path)]))


def test_encoder_folders_asking_for_remote_code_are_refused(tmp_path) -> None:
    """`extract --encoder DIR` loads through the same guard as audit and pseudo groups."""
    from emodebias.features.encoders import get_encoder
    from emodebias.features.encoders.base import EncoderError

    enc = _save_tiny(tmp_path / "enc", cls="Wav2Vec2Model")
    assert get_encoder(enc).n_layers >= 1  # the plain folder loads
    cfg = json.loads((enc / "config.json").read_text())
    (enc / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(EncoderError, match="never runs code shipped with a model"):
        get_encoder(enc)


def _tiny_ast(path: Path) -> None:
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    ASTForAudioClassification(ASTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_length=128, num_mel_bins=32, id2label={0: "angry", 1: "sad"},
        label2id={"angry": 0, "sad": 1})).save_pretrained(path)
    ASTFeatureExtractor(num_mel_bins=32, max_length=128).save_pretrained(path)


def _tiny_whisper(path: Path) -> None:
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForAudioClassification,
    )

    WhisperForAudioClassification(WhisperConfig(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
        classifier_proj_size=8, id2label={0: "angry", 1: "sad"},
        label2id={"angry": 0, "sad": 1})).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)


@pytest.mark.parametrize("make", [_tiny_ast, _tiny_whisper], ids=["ast", "whisper"])
def test_spectrogram_classifiers_equal_a_direct_forward_pass(make, emodb_sub, tmp_path) -> None:
    """Any AutoModelForAudioClassification: spectrogram models pad as their extractor does."""
    man, _ = emodb_sub
    sub = Manifest(man.df.iloc[:5].reset_index(drop=True), man.classes, man.corpus)
    torch.manual_seed(0)
    make(tmp_path / "m")
    res = audit(tmp_path / "m", sub, out=tmp_path / "a", batch_size=3, n_boot=0, n_perm=0,
                show_progress=False, plots=False)
    got = load_predictions(res.path)["probs"][:, [0, 1]]  # angry, sad; the rest are 0
    np.testing.assert_allclose(got, _direct(tmp_path / "m", list(sub.df["path"])), atol=1e-5)
