"""prepare_dataset and resolve_dataset: text → tokenizer + shards + meta.json, exactly and atomically; the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from synthetic_corpus import synthetic_text

import alrt_core.data.prepare as prepare_module
from alrt_core.data.documents import Document
from alrt_core.data.prepare import DatasetInfo, default_cache_dir, load_dataset, prepare_dataset, resolve_dataset
from alrt_core.data.shards import list_shards, read_shard, write_shard
from alrt_core.data.tokenizer import Tokenizer
from alrt_core.errors import UserError

TRICKY = [
    "  Leading spaces, trailing ones   \nCaf\u00e9 \u2014 na\u00efve and \u65e5\u672c\u8a9e \U0001f3ad\n\n\n",
    "tabs\t\tand CRLF\r\nand    runs of     spaces\n\tindented",
]




def write_corpus(folder: Path, count: int = 8, seed: int = 0) -> list[str]:
    """`count` synthetic .txt files plus a .jsonl of the tricky texts; returns every document text."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = [synthetic_text(seed * 100 + i, lines=60) for i in range(count)]
    for index, text in enumerate(texts):
        (folder / f"{index:02d}.txt").write_text(text, encoding="utf-8", newline="")
    (folder / "tricky.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in TRICKY), encoding="utf-8")
    return texts + TRICKY


def decoded_documents(info: DatasetInfo, split: str) -> list[str]:
    tokenizer = Tokenizer.load(info.tokenizer_path)
    stream = np.concatenate([np.asarray(read_shard(path)) for path in list_shards(info.root, split)])
    assert stream[0] == tokenizer.bos_id
    return [tokenizer.decode(doc[1:]) for doc in np.split(stream, np.flatnonzero(stream == tokenizer.bos_id))[1:]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[DatasetInfo, list[str]]:
    root = tmp_path_factory.mktemp("prepare")
    texts = write_corpus(root / "in")
    return prepare_dataset([root / "in"], root / "out", vocab_size=300, val_fraction=0.25, progress=False), texts


def test_shards_decode_to_the_input_documents_exactly(prepared):
    info, texts = prepared
    train, val = decoded_documents(info, "train"), decoded_documents(info, "val")
    assert sorted(train + val) == sorted(texts)
    assert (len(train), len(val)) == (8, 2)  # 10 documents, 25% held out, whole documents only
    assert not set(train) & set(val)


def test_folder_layout_and_meta(prepared):
    info, texts = prepared
    assert sorted(p.name for p in info.root.iterdir()) == [
        "meta.json", "tokenizer.model", "train_000000.bin", "val_000000.bin"
    ]
    assert not [p for p in info.root.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    meta = json.loads((info.root / "meta.json").read_text(encoding="utf-8"))
    assert meta == info.meta
    assert meta["format_version"] == prepare_module.META_FORMAT_VERSION and meta["vocab_size"] == info.vocab_size == 300
    assert (meta["bos_id"], meta["eos_id"], meta["lossless"]) == (1, 2, True)
    assert (meta["train_documents"], meta["val_documents"]) == (8, 2)
    assert meta["train_tokens"] == read_shard(info.train_files[0]).size
    assert meta["val_tokens"] == read_shard(info.val_files[0]).size
    assert meta["train_bytes"] + meta["val_bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert meta["tokenizer_settings"]["trained"] is True
    assert meta["tokenizer_settings"]["options"]["normalization_rule_name"] == "identity"
    assert meta["tokenizer_settings"]["normalizer"]["name"] == "identity"
    assert meta["split"] == {"method": "fraction", "val_fraction": 0.25, "seed": 1337}
    assert meta["sources"] == [str(info.root.parent / "in")] and meta["created"].endswith("Z")


def test_counted_bytes_match_meta_bytes(prepared):
    info, _ = prepared
    tokenizer = Tokenizer.load(info.tokenizer_path)
    for split, files in (("train", info.train_files), ("val", info.val_files)):
        stream = np.asarray(read_shard(files[0]))
        assert tokenizer.count_bytes(stream[:-1], stream[1:]) == info.meta[f"{split}_bytes"]


def test_small_shards_are_filled_exactly_and_form_one_stream(prepared, tmp_path):
    info, texts = prepared
    small = prepare_dataset(
        [info.root.parent / "in"], tmp_path / "small", tokenizer=info.tokenizer_path, val_fraction=0.25,
        shard_tokens=500, progress=False,
    )
    sizes = [read_shard(path).size for path in small.train_files]
    assert len(sizes) > 2 and set(sizes[:-1]) == {500} and 0 < sizes[-1] <= 500
    assert sum(sizes) == small.meta["train_tokens"] == info.meta["train_tokens"]
    assert [p.name for p in small.train_files][:2] == ["train_000000.bin", "train_000001.bin"]
    assert sorted(decoded_documents(small, "train") + decoded_documents(small, "val")) == sorted(texts)
    assert small.tokenizer_path.read_bytes() == info.tokenizer_path.read_bytes()
    assert small.meta["tokenizer_settings"]["trained"] is False


def test_explicit_validation_inputs(tmp_path):
    texts = write_corpus(tmp_path / "in", count=1)  # one .txt and one .jsonl
    (tmp_path / "val.txt").write_text("held  out\n\ttext \u00e9\n", encoding="utf-8")
    info = prepare_dataset([tmp_path / "in"], tmp_path / "out", vocab_size=300, val_inputs=[tmp_path / "val.txt"],
                           progress=False)
    assert decoded_documents(info, "val") == ["held  out\n\ttext \u00e9\n"]
    assert sorted(decoded_documents(info, "train")) == sorted(texts)
    assert info.meta["split"] == {"method": "val_inputs"}


def test_a_single_text_file_is_split_at_a_paragraph_near_the_fraction(tmp_path):
    book = tmp_path / "book.txt"
    text = "\n\n".join(synthetic_text(i, lines=12) for i in range(20))  # one document of 20 paragraphs
    book.write_text(text, encoding="utf-8", newline="")
    info = prepare_dataset([book], tmp_path / "out", vocab_size=300, val_fraction=0.1, progress=False)
    (train,), (val,) = decoded_documents(info, "train"), decoded_documents(info, "val")
    assert train + val == text
    assert info.meta["train_bytes"] + info.meta["val_bytes"] == len(text.encode("utf-8"))
    assert 0.05 < info.meta["val_bytes"] / len(text.encode("utf-8")) < 0.15
    assert train.endswith("\n\n") and not val.startswith("\n")
    assert info.meta["split"]["method"] == "single_document" and info.meta["val_documents"] == 1


def test_golf_normalization_dataset_counts_decoded_bytes(tmp_path):
    write_corpus(tmp_path / "in")
    info = prepare_dataset([tmp_path / "in"], tmp_path / "out", vocab_size=300, golf_normalization=True,
                           val_fraction=0.25, progress=False)
    tokenizer = Tokenizer.load(info.tokenizer_path)
    assert info.meta["lossless"] is False and tokenizer.normalizer["name"] == "nmt_nfkc"
    stream = np.asarray(read_shard(info.train_files[0]))
    assert tokenizer.count_bytes(stream[:-1], stream[1:]) == sum(
        len(text.encode("utf-8")) for text in decoded_documents(info, "train")
    )


def test_existing_dataset_is_replaced_but_foreign_folders_are_refused(prepared, tmp_path):
    info, _ = prepared
    out = tmp_path / "out"
    write_corpus(tmp_path / "a", count=3, seed=1)
    write_corpus(tmp_path / "b", count=5, seed=2)
    first = prepare_dataset([tmp_path / "a"], out, tokenizer=info.tokenizer_path, progress=False)
    second = prepare_dataset([tmp_path / "b"], out, tokenizer=info.tokenizer_path, progress=False)
    assert first.meta["train_documents"] + first.meta["val_documents"] == 5
    assert second.meta["train_documents"] + second.meta["val_documents"] == 7
    assert json.loads((out / "meta.json").read_text())["sources"] == [str(tmp_path / "b")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]  # old copy and staging cleaned up

    (tmp_path / "empty").mkdir()
    prepare_dataset([tmp_path / "a"], tmp_path / "empty", tokenizer=info.tokenizer_path, progress=False)
    assert (tmp_path / "empty" / "meta.json").is_file()

    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match=r"holds files that are not a prepared dataset \(notes.txt\)"):
        prepare_dataset([tmp_path / "a"], out, tokenizer=info.tokenizer_path, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="exists and is not a folder"):
        prepare_dataset([tmp_path / "a"], out / "notes.txt", progress=False)


def test_failed_prepare_leaves_the_previous_dataset_untouched(prepared, tmp_path):
    info, _ = prepared
    out = tmp_path / "out"
    write_corpus(tmp_path / "a", count=3)
    prepare_dataset([tmp_path / "a"], out, tokenizer=info.tokenizer_path, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    cjk = "".join(chr(0x4E00 + i) + " " for i in range(120)) * 20  # too many characters for vocab 300
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text(cjk, encoding="utf-8")
    (tmp_path / "b" / "y.txt").write_text(cjk, encoding="utf-8")
    with pytest.raises(UserError, match="tokenizer training failed"):
        prepare_dataset([tmp_path / "b"], out, vocab_size=300, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


def test_prepare_argument_errors(tmp_path):
    (tmp_path / "one.txt").write_text("a single document", encoding="utf-8")
    with pytest.raises(UserError, match="--val-input"):
        prepare_dataset([tmp_path / "one.txt"], tmp_path / "out", vocab_size=300, progress=False)
    with pytest.raises(UserError, match="vocab size 70000 does not fit uint16"):
        prepare_dataset([tmp_path / "one.txt"], tmp_path / "out", vocab_size=70_000, progress=False)
    with pytest.raises(UserError, match="input not found"):
        prepare_dataset([tmp_path / "nope"], tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.txt"]


def test_resolve_raw_text_prepares_once_then_reuses_the_cache(tmp_path, monkeypatch):
    corpus = tmp_path / "My Corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": synthetic_text(i, lines=60)}) for i in range(6)), encoding="utf-8")
    trainings = []
    real_train = prepare_module.train_tokenizer_with_settings
    monkeypatch.setattr(prepare_module, "train_tokenizer_with_settings",
                        lambda *args, **kwargs: trainings.append(1) or real_train(*args, **kwargs))
    first = resolve_dataset(str(corpus), None, tmp_path / "cache", vocab_size=300, progress=False)
    assert first.root.parent == tmp_path / "cache" and first.root.name.startswith("My Corpus-")
    assert first.root.name.endswith("-v300") and len(first.root.name) == len("My Corpus-") + 12 + len("-v300")
    stamp = first.tokenizer_path.stat().st_mtime_ns
    second = resolve_dataset(str(corpus), None, tmp_path / "cache", vocab_size=300, progress=False)
    assert second.root == first.root and second.tokenizer_path.stat().st_mtime_ns == stamp
    assert len(trainings) == 1 and second.meta == first.meta

    # A truncated shard in the cache is noticed and the dataset rebuilt.
    shard = first.train_files[0]
    shard.write_bytes(shard.read_bytes()[:-2])
    third = resolve_dataset(str(corpus), None, tmp_path / "cache", vocab_size=300, progress=False)
    assert len(trainings) == 2 and read_shard(third.train_files[0]).size == first.meta["train_tokens"]

    # Changed content → a new cache entry.
    records = [{"text": "changed"}, {"text": synthetic_text(9, lines=60)}]
    corpus.write_text("\n".join(map(json.dumps, records)), encoding="utf-8")
    fourth = resolve_dataset(str(corpus), None, tmp_path / "cache", vocab_size=300, progress=False)
    assert fourth.root != first.root and len(trainings) == 3


def test_resolve_shard_folders(prepared, tmp_path):
    info, _ = prepared
    assert resolve_dataset(str(info.root), None, tmp_path / "cache").root == info.root
    golf_style = tmp_path / "golf"
    golf_style.mkdir()
    write_shard(golf_style / "fineweb_train_000000.bin", np.arange(10))
    write_shard(golf_style / "fineweb_val_000000.bin", np.arange(10))
    with pytest.raises(UserError, match="golf: no tokenizer.model in the folder; pass --tokenizer PATH"):
        resolve_dataset(str(golf_style), None, tmp_path / "cache")
    resolved = resolve_dataset(str(golf_style), str(info.tokenizer_path), tmp_path / "cache")
    assert [p.name for p in resolved.val_files] == ["fineweb_val_000000.bin"] and resolved.vocab_size == 300
    (golf_style / "fineweb_val_000000.bin").unlink()
    with pytest.raises(UserError, match="golf: no val shards"):
        resolve_dataset(str(golf_style), str(info.tokenizer_path), tmp_path / "cache")
    with pytest.raises(UserError, match="data not found"):
        resolve_dataset(str(tmp_path / "missing"), None, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_resolve_default_is_the_embedded_corpus_cached_by_vocab(tmp_path, monkeypatch):
    # A few works stand in for the full corpus to keep the test fast; the folder logic is the same.
    small = ([Document("Hamlet", synthetic_text(1, lines=60)), Document("Othello", synthetic_text(2, lines=60))],
             [Document("Macbeth", synthetic_text(3, lines=60)), Document("Sonnets", TRICKY[0])])
    calls = []
    monkeypatch.setattr(prepare_module, "shakespeare_split", lambda: calls.append(1) or small)
    info = resolve_dataset(None, None, tmp_path / "cache", vocab_size=300, progress=False)
    assert info.root == tmp_path / "cache" / "shakespeare-v300"
    assert decoded_documents(info, "val") == [small[1][0].text, small[1][1].text]
    assert info.meta["val_titles"] == ["Macbeth", "Sonnets"] and len(info.meta["corpus_sha256"]) == 16
    assert resolve_dataset(None, None, tmp_path / "cache", vocab_size=300, progress=False).root == info.root
    assert len(calls) == 1


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ALRT_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ALRT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "alrt"


def test_load_dataset_reads_meta(prepared):
    info, _ = prepared
    again = load_dataset(info.root)
    assert (again.train_files, again.val_files, again.vocab_size) == (info.train_files, info.val_files, 300)
