"""Corpus readers on generated miniature IEMOCAP / MELD trees and real EmoDB files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dropformer.data.audio import load_audio
from dropformer.data.emodb import read_emodb
from dropformer.data.folds import make_folds, select_folds
from dropformer.data.iemocap import read_iemocap
from dropformer.data.load import load_corpus
from dropformer.data.manifest import read_manifest
from dropformer.data.meld import read_meld
from dropformer.errors import ConfigError, DataError

SR = 16_000


def _tone(path: Path, seconds: float = 0.2, freq: float = 220.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, subtype="PCM_16")


# (session, dialog, utterance, code); the last of session 2 has no wav on disk.
IEMOCAP_ROWS = [
    (1, "Ses01F_impro01", "Ses01F_impro01_F000", "neu"),
    (1, "Ses01F_impro01", "Ses01F_impro01_M000", "exc"),
    (1, "Ses01F_impro01", "Ses01F_impro01_F001", "fru"),
    (1, "Ses01M_script01_1", "Ses01M_script01_1_M003", "ang"),
    (2, "Ses02F_impro02", "Ses02F_impro02_F000", "hap"),
    (2, "Ses02F_impro02", "Ses02F_impro02_M001", "sad"),
    (2, "Ses02F_impro02", "Ses02F_impro02_F002", "xxx"),
    (2, "Ses02F_impro02", "Ses02F_impro02_M002", "neu"),
]
MISSING = "Ses02F_impro02_M002"


@pytest.fixture()
def iemocap_root(tmp_path: Path) -> Path:
    root = tmp_path / "IEMOCAP_full_release"
    by_dialog: dict[tuple[int, str], list[str]] = {}
    for i, (s, dialog, utt, code) in enumerate(IEMOCAP_ROWS):
        line = f"[{i:.4f} - {i + 1.5:.4f}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]"
        by_dialog.setdefault((s, dialog), []).append(line + "\nC-E1:\tNeutral;\t()\n")
        if utt != MISSING:
            _tone(root / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav")
    for (s, dialog), lines in by_dialog.items():
        d = root / f"Session{s}" / "dialog" / "EmoEvaluation"
        d.mkdir(parents=True, exist_ok=True)
        header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        (d / f"{dialog}.txt").write_text(header + "\n".join(lines))
    # One malformed label line in session 1.
    with (root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").open("a") as fh:
        fh.write("[oops]\tSes01F_impro01_F009\tneu\n")
    return root


def test_iemocap_labels_speakers_report_and_folds(iemocap_root: Path) -> None:
    c = read_iemocap(iemocap_root, sessions=(1, 2))
    got = {u.uid: (u.label, u.speaker, u.group) for u in c.utterances}
    assert got == {
        "Ses01F_impro01_F000": ("neutral", "Ses01F", "1"),
        "Ses01F_impro01_M000": ("happy", "Ses01M", "1"),  # exc -> happy
        "Ses01M_script01_1_M003": ("angry", "Ses01M", "1"),
        "Ses02F_impro02_F000": ("happy", "Ses02F", "2"),
        "Ses02F_impro02_M001": ("sad", "Ses02M", "2"),
    }
    assert c.report.used == 5
    assert dict(c.report.excluded) == {"fru": 1, "xxx": 1}  # excluded, not problems
    reasons = [str(p) for p in c.report.problems]
    assert len(reasons) == 2
    assert any(MISSING in r and "missing wav" in r for r in reasons)
    assert any("malformed" in r for r in reasons)
    assert c.utterances[0].duration_s == pytest.approx(1.5)
    with pytest.raises(DataError, match=MISSING):
        c.report.check(strict=True)
    folds = make_folds(c.utterances, "group", val_count=0)
    assert [(f.name, len(f.train), len(f.test)) for f in folds] == [("1", 2, 3), ("2", 3, 2)]


def test_iemocap_missing_session_is_reported(iemocap_root: Path) -> None:
    c = read_iemocap(iemocap_root)  # sessions 3-5 do not exist
    assert c.report.used == 5
    assert sum("Session3" in str(p) for p in c.report.problems) == 1


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_meld_csv_media_and_ffmpeg_decoding(tmp_path: Path) -> None:
    header = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
    rows = {
        "train": [
            ("Hi, there", "Joey", "joy", 0, 0),
            ("No.", "Ross", "anger", 0, 1),
            ("Oh", "Monica", "neutral", 1, 0),
        ],
        "dev": [("Well", "Rachel", "sadness", 0, 0)],
        "test": [("Wow", "Chandler", "surprise", 0, 0), ("Hm", "Phoebe", "fear", 2, 3)],
    }
    folders = {
        "train": "train_splits",
        "dev": "dev_splits_complete",
        "test": "output_repeated_splits_test",
    }
    mp4 = tmp_path / "tone.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=0.3",
            "-ac",
            "1",
            "-ar",
            "44100",
            "-c:a",
            "aac",
            str(mp4),
        ],
        check=True,
    )
    for split, items in rows.items():
        text = header + "".join(
            f'{i},"{u}",{s},{e},x,{d},{k},1,1,0,1\n' for i, (u, s, e, d, k) in enumerate(items, 1)
        )
        (tmp_path / f"{split}_sent_emo.csv").write_text(text)
        (tmp_path / folders[split]).mkdir()
        for *_, d, k in items:
            if (split, d, k) != ("test", 2, 3):  # one media file missing
                shutil.copy(mp4, tmp_path / folders[split] / f"dia{d}_utt{k}.mp4")
    c = read_meld(tmp_path)
    assert len(c.labels) == 7
    assert [(u.uid, u.label, u.speaker) for u in c.utterances] == [
        ("train/dia0_utt0", "joy", "Joey"),
        ("train/dia0_utt1", "anger", "Ross"),
        ("train/dia1_utt0", "neutral", "Monica"),
        ("dev/dia0_utt0", "sadness", "Rachel"),
        ("test/dia0_utt0", "surprise", "Chandler"),
    ]
    assert len(c.report.problems) == 1 and "dia2_utt3" in str(c.report.problems[0])
    (fold,) = make_folds(c.utterances, "split")
    assert (len(fold.train), len(fold.val), len(fold.test)) == (3, 1, 1)
    wav = load_audio(c.utterances[0].path)
    assert wav.dtype == np.float32 and abs(len(wav) / SR - 0.3) < 0.05
    spectrum = np.abs(np.fft.rfft(wav))
    assert abs(np.argmax(spectrum) * SR / len(wav) - 440) < 10  # really the decoded tone, at 16 kHz


def test_emodb_names_mapping_and_exclusions(tmp_path: Path) -> None:
    for name in ["03a01Fa", "03a01Wa", "10b02Na", "10b02Ta", "11a01Lb", "11a01Ab", "bad_name"]:
        _tone(tmp_path / "wav" / f"{name}.wav")
    c = read_emodb(tmp_path)
    assert [(u.uid, u.label, u.speaker) for u in c.utterances] == [
        ("03a01Fa", "happy", "03"),
        ("03a01Wa", "angry", "03"),
        ("10b02Na", "neutral", "10"),
        ("10b02Ta", "sad", "10"),
    ]
    assert dict(c.report.excluded) == {"boredom": 1, "fear": 1}
    assert len(c.report.problems) == 1 and "bad_name" in str(c.report.problems[0])
    mapped = read_emodb(tmp_path / "wav", label_map={"boredom": "neutral"})
    assert {u.uid: u.label for u in mapped.utterances}["11a01Lb"] == "neutral"


def test_manifest_and_speaker_folds(tmp_path: Path) -> None:
    lines = ["path,label,speaker,split"]
    for spk in ("a", "b", "c", "d"):
        for lab in ("angry", "sad"):
            _tone(tmp_path / "audio" / f"{spk}_{lab}.wav")
            lines.append(f"audio/{spk}_{lab}.wav,{lab},{spk},train")
    lines += ["audio/gone.wav,sad,d,train", "audio/a_angry.wav,bored,a,train"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    assert read_manifest(tmp_path / "m.csv").labels == (
        "angry",
        "bored",
        "sad",
    )  # all labels found, sorted
    c = read_manifest(tmp_path / "m.csv", labels=("angry", "sad"))
    assert c.labels == ("angry", "sad") and len(c.utterances) == 8
    assert dict(c.report.excluded) == {"bored": 1}
    assert "gone.wav" in str(c.report.problems[0])
    folds = make_folds(c.utterances, "speaker", val_count=1)
    assert [f.name for f in folds] == ["a", "b", "c", "d"]
    for f in folds:
        spk = lambda us: {u.speaker for u in us}  # noqa: E731
        assert (
            spk(f.test) == {f.name}
            and len(spk(f.val)) == 1
            and not spk(f.train) & (spk(f.test) | spk(f.val))
        )
        assert len(f.train) + len(f.val) + len(f.test) == 8
    k2 = make_folds(c.utterances, "kfold", num_folds=2, val_count=0)
    assert sorted(len(f.test) for f in k2) == [4, 4]
    assert not {u.speaker for u in k2[0].test} & {u.speaker for u in k2[0].train}
    assert [f.index for f in select_folds(folds, [2, 4])] == [2, 4]
    with pytest.raises(ConfigError, match="train.folds"):
        select_folds(folds, [5])
    with pytest.raises(DataError, match="data.strict"):
        load_corpus(
            "manifest", None, manifest=tmp_path / "m.csv", labels=("angry", "sad"), strict=True
        )


FIXTURE = Path(__file__).resolve().parents[1] / "data" / "emodb"


def _nemo_tree(root: Path) -> Path:
    """A miniature nEMO release: labels.csv and FLAC files (real EmoDB speech under nEMO names)."""
    (root / "wav").mkdir(parents=True)
    rows = ["file,speaker,gender,age,emotion,text,duration_s"]
    sources = sorted(FIXTURE.glob("*.wav"))
    for i, (spk, emo) in enumerate(
        [
            ("AA0", "anger"),
            ("AA0", "neutral"),
            ("BB0", "sadness"),
            ("BB0", "happiness"),
            ("BB0", "fear"),
            ("CC0", "anger"),
        ]
    ):
        name = f"{spk}_{emo}_{i}.flac"
        wav, sr = sf.read(sources[i], dtype="float32")
        sf.write(root / "wav" / name, wav, sr, format="FLAC")
        rows.append(f"{name},{spk},x,30,{emo},zdanie,{len(wav) / sr:.3f}")
    rows.append("missing.flac,CC0,x,30,sadness,zdanie,1.0")
    rows.append("odd.flac,CC0,x,30,boredom,zdanie,1.0")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_nemo_reader_maps_labels_and_reports_every_skip(tmp_path: Path) -> None:
    from dropformer.data.nemo import read_nemo

    corpus = read_nemo(_nemo_tree(tmp_path / "nemo"))
    assert len(corpus.utterances) == 5 and corpus.labels == ("neutral", "happy", "angry", "sad")
    assert {u.label for u in corpus.utterances} == {"angry", "neutral", "sad", "happy"}
    assert corpus.report.excluded == {"fear": 1}
    reasons = " ".join(p.reason for p in corpus.report.problems)
    assert "missing audio file" in reasons and "unknown emotion 'boredom'" in reasons


def test_two_corpora_combined_then_left_out_in_turn(tmp_path: Path) -> None:
    from dropformer.data.load import SourceSpec, load_sources
    from dropformer.training import epoch_order

    corpus = load_sources(
        [
            SourceSpec("emodb", "emodb", str(FIXTURE)),
            SourceSpec("nemo", "nemo", str(_nemo_tree(tmp_path / "nemo"))),
        ]
    )
    assert len(corpus.utterances) == 12 + 5
    assert {u.corpus for u in corpus.utterances} == {"emodb", "nemo"}
    assert all(
        u.uid.startswith(f"{u.corpus}/") and u.speaker.startswith(f"{u.corpus}/")
        for u in corpus.utterances
    )
    loco = make_folds(corpus.utterances, "corpus", val_count=0)
    assert [f.name for f in loco] == ["emodb", "nemo"]
    assert {u.corpus for u in loco[0].train} == {"nemo"} and {u.corpus for u in loco[0].test} == {
        "emodb"
    }
    # leave one EmoDB speaker out, nEMO always trains
    loso = make_folds(corpus.utterances, "speaker", val_count=0, test_sources=["emodb"])
    assert [f.name for f in loso] == ["emodb/03", "emodb/10", "emodb/16"]
    assert all({u.corpus for u in f.test} == {"emodb"} for f in loso)
    assert all(sum(u.corpus == "nemo" for u in f.train) == 5 for f in loso)
    # balanced draws: each (corpus, class) cell equally likely, though nEMO has 5 and EmoDB 12 utterances here
    import random

    order = epoch_order(corpus.utterances, "source_class", random.Random(0), size=8000)
    cells: dict[tuple[str, str], int] = {}
    for i in order:
        u = corpus.utterances[i]
        cells[(u.corpus, u.label)] = cells.get((u.corpus, u.label), 0) + 1
    assert len(cells) == 8 and max(cells.values()) / min(cells.values()) < 1.25
    with pytest.raises(ConfigError, match="unique"):
        load_sources(
            [SourceSpec("a", "emodb", str(FIXTURE)), SourceSpec("a", "emodb", str(FIXTURE))]
        )
