"""Tokenizer: lossless round trip, golf settings, the model proto, and the bpb byte accounting invariant."""

from __future__ import annotations

import io

import numpy as np
import pytest
import sentencepiece as spm
from synthetic_corpus import synthetic_text

from alrt_core.data.documents import Document
from alrt_core.data.tokenizer import Tokenizer, normalizer_spec, train_tokenizer
from alrt_core.errors import UserError

# Whitespace runs, tabs, CRLF, blank lines, leading/trailing spaces, and characters never seen in training
# (byte fallback): everything the lossless tokenizer must give back exactly.
TRICKY = [
    "ROMEO.\n    But soft, what light through yonder window breaks?\n\n\tIt is the east.  Two  spaces.\n",
    "  Leading spaces, trailing ones   \nCaf\u00e9 \u2014 na\u00efve \u2018quotes\u2019 and \u65e5\u672c\u8a9e"
    " and emoji \U0001f3ad\n\n\n",
    "Numbers 12345 and a line\r\nwith CRLF, tabs\t\tand a final line without newline",
    "\n\nstarts with newlines",
    " x",
    "x",
    "   ",
    "\t",
    "\u00a0non-breaking\u3000ideographic space",
]




@pytest.fixture(scope="module")
def documents() -> list[Document]:
    return [Document(f"doc{i}", synthetic_text(i)) for i in range(12)]


@pytest.fixture(scope="module")
def lossless(documents, tmp_path_factory) -> Tokenizer:
    return Tokenizer.load(train_tokenizer(documents, tmp_path_factory.mktemp("tok") / "lossless.model", vocab_size=320))


@pytest.fixture(scope="module")
def golf(documents, tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "golf.model"
    return Tokenizer.load(train_tokenizer(documents, path, vocab_size=320, golf_normalization=True))


@pytest.fixture(scope="module")
def dummy_prefix(documents) -> Tokenizer:
    """A llama-style model (identity, no whitespace collapsing, dummy prefix), trained directly with sentencepiece."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(doc.text for doc in documents), model_writer=model, model_type="bpe", vocab_size=320,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, hard_vocab_limit=False, minloglevel=2,
    )
    return Tokenizer.from_bytes(model.getvalue())


def bos_stream(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    stream: list[int] = []
    for text in texts:
        stream += [tokenizer.bos_id, *tokenizer.encode(text)]
    return np.asarray(stream, dtype=np.uint16)


def test_lossless_tokenizer_round_trips_exactly(lossless):
    for text in TRICKY + [synthetic_text(99)]:
        assert lossless.decode(lossless.encode(text)) == text
    assert lossless.lossless and not lossless.adds_dummy_prefix and not lossless.drops_leading_space


def test_lossless_tokenizer_ids_and_pieces(lossless):
    sp = lossless.sp
    assert lossless.vocab_size == 320
    assert (sp.pad_id(), lossless.bos_id, lossless.eos_id, sp.unk_id()) == (0, 1, 2, 3)
    assert [sp.id_to_piece(i) for i in (4, 259)] == ["<0x00>", "<0xFF>"]
    assert lossless.decode(lossless.encode("a,\n\n    the")) == "a,\n\n    the"
    assert all(sp.is_byte(i) for i in lossless.encode("\U0001f3ad"))  # unseen character: 4 byte pieces
    assert len(lossless.encode("\U0001f3ad")) == 4


def test_golf_tokenizer_uses_the_parameter_golf_settings(golf):
    assert golf.normalizer == {"name": "nmt_nfkc", "add_dummy_prefix": False, "remove_extra_whitespaces": True}
    assert not golf.lossless and golf.drops_leading_space
    assert (golf.sp.pad_id(), golf.bos_id, golf.eos_id, golf.sp.unk_id()) == (0, 1, 2, 3)
    assert golf.decode(golf.encode("a  b\n\nc  ")) == "a b c"  # whitespace collapsed: lossy by design


def test_normalizer_spec_is_read_from_the_model_proto(lossless, golf, dummy_prefix):
    assert normalizer_spec(lossless.model_bytes()) == {
        "name": "identity", "add_dummy_prefix": False, "remove_extra_whitespaces": False,
    }
    assert dummy_prefix.adds_dummy_prefix and dummy_prefix.drops_leading_space and not dummy_prefix.lossless


def test_byte_tables_follow_the_parameter_golf_rules(lossless):
    base, leading, boundary = lossless.token_byte_tables()
    assert (base.dtype, leading.dtype, boundary.dtype) == (np.int16, np.bool_, np.bool_)
    assert base.shape == leading.shape == boundary.shape == (320,)
    assert boundary[:4].all() and not boundary[4:].any() and not base[:4].any()  # pad, BOS, EOS, unk: 0 bytes
    assert (base[4:260] == 1).all() and not leading[4:260].any()  # byte pieces count one byte
    sp = lossless.sp
    for token in range(260, 320):
        piece = sp.id_to_piece(token)
        assert leading[token] == piece.startswith("▁")
        assert base[token] + leading[token] == len(piece.replace("▁", " ").encode("utf-8"))


@pytest.mark.parametrize("name", ["lossless", "golf", "dummy_prefix"])
def test_counted_bytes_equal_utf8_length_of_each_decoded_document(request, name):
    tokenizer: Tokenizer = request.getfixturevalue(name)
    texts = TRICKY + [synthetic_text(7), " the", "the"]
    stream = bos_stream(tokenizer, texts)
    counted = tokenizer.count_bytes(stream[:-1], stream[1:])
    documents = np.split(stream, np.flatnonzero(stream == tokenizer.bos_id))[1:]
    decoded = [tokenizer.decode(doc[1:]) for doc in documents]
    assert counted == sum(len(text.encode("utf-8")) for text in decoded)
    # Per document too, so errors cannot cancel out across documents.
    for doc, text in zip(documents, decoded, strict=True):
        assert tokenizer.count_bytes(doc[:-1], doc[1:]) == len(text.encode("utf-8"))
    if tokenizer.lossless:
        assert decoded == texts
        assert counted == sum(len(text.encode("utf-8")) for text in texts)


def test_leading_space_after_bos_counts_unless_decode_drops_it(lossless, dummy_prefix):
    # Lossless: " the" after BOS decodes to " the" (4 bytes); dummy prefix: "the" gains a "▁" that decode drops.
    stream = bos_stream(lossless, [" the"])
    assert lossless.count_bytes(stream[:-1], stream[1:]) == 4
    stream = bos_stream(dummy_prefix, ["the"])
    assert dummy_prefix.sp.id_to_piece(int(stream[1])).startswith("▁")
    assert dummy_prefix.count_bytes(stream[:-1], stream[1:]) == 3
    # The same token after a non-boundary token is a real space.
    the = int(stream[1])
    assert dummy_prefix.count_bytes(np.array([the]), np.array([the])) == 4


def test_count_bytes_known_values_and_shape_check(lossless):
    stream = bos_stream(lossless, ["ab  c\n", "\u00e9\t"])  # 6 + 3 bytes
    assert lossless.count_bytes(stream[:-1], stream[1:]) == 9
    assert lossless.count_bytes(np.array([], dtype=np.uint16), np.array([], dtype=np.uint16)) == 0
    with pytest.raises(ValueError, match="differ in shape"):
        lossless.count_bytes(stream[:-2], stream[1:])


def test_model_bytes_reload_to_the_same_tokenizer(lossless):
    again = Tokenizer.from_bytes(lossless.model_bytes())
    assert again.encode(TRICKY[0]) == lossless.encode(TRICKY[0])
    assert lossless.encode_batch(TRICKY) == [lossless.encode(text) for text in TRICKY]


def test_training_writes_only_the_model_file(documents, tmp_path):
    train_tokenizer(documents[:3], tmp_path / "t.model", vocab_size=300)
    assert [p.name for p in tmp_path.iterdir()] == ["t.model"]


def test_tokenizer_errors(tmp_path, documents):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="bad.model: not a sentencepiece model"):
        Tokenizer.load(bad)
    with pytest.raises(UserError, match="tokenizer not found: .*missing.model"):
        Tokenizer.load(tmp_path / "missing.model")
    with pytest.raises(UserError, match=r"vocab size must be in \(261, 65536\]"):
        train_tokenizer(documents, tmp_path / "t.model", vocab_size=261)
    with pytest.raises(UserError, match="vocab size must be in"):
        train_tokenizer(documents, tmp_path / "t.model", vocab_size=70_000)
    # 120 distinct, equally frequent characters cannot fit in 300 - 261 ids.
    many = "".join(chr(0x4E00 + i) + " " for i in range(120)) * 20
    with pytest.raises(UserError, match="tokenizer training failed at vocab size 300: this text needs at least"):
        train_tokenizer([Document("cjk", many)], tmp_path / "t.model", vocab_size=300)
    assert not (tmp_path / "t.model").exists()


def test_tokenizer_without_bos_is_refused(documents):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(doc.text for doc in documents), model_writer=model, model_type="bpe",
        vocab_size=100, bos_id=-1, eos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    with pytest.raises(UserError, match="tokenizer has no BOS token"):
        Tokenizer.from_bytes(model.getvalue(), source="nobos.model")


@pytest.mark.parametrize("name", ["lossless", "golf", "dummy_prefix"])
def test_encode_documents_matches_encode(request, name):
    tokenizer: Tokenizer = request.getfixturevalue(name)
    texts = TRICKY + [synthetic_text(5), ""]
    encoded = tokenizer.encode_documents(texts)
    assert all(ids.dtype == np.int32 for ids in encoded)
    assert [ids.tolist() for ids in encoded] == [tokenizer.encode(text) for text in texts]
