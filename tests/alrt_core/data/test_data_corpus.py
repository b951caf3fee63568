"""The embedded Shakespeare corpus, and the lossless tokenizer on real text from it."""

from __future__ import annotations

import numpy as np

from alrt_core.data.corpus import SHAKESPEARE_VALIDATION_TITLES, load_shakespeare, shakespeare_digest, shakespeare_split
from alrt_core.data.documents import Document
from alrt_core.data.tokenizer import Tokenizer, train_tokenizer


def test_embedded_corpus_has_42_works_and_the_validation_titles():
    works = load_shakespeare()
    titles = [doc.title for doc in works]
    assert len(works) == 42 and len(set(titles)) == 42
    assert set(SHAKESPEARE_VALIDATION_TITLES) <= set(titles)
    assert all(len(doc.text) > 1000 for doc in works)
    assert sum(len(doc.text.encode("utf-8")) for doc in works) == 5_057_239
    train, val = shakespeare_split()
    assert [doc.title for doc in val] == ["Macbeth", "Sonnets", "Twelfth Night"]  # corpus order
    assert len(train) == 39 and not {doc.title for doc in train} & set(SHAKESPEARE_VALIDATION_TITLES)
    assert len(shakespeare_digest()) == 16


def test_lossless_tokenizer_on_real_text_round_trips_and_counts_bytes(tmp_path):
    works = {doc.title: doc.text for doc in load_shakespeare()}
    sample = [Document(title, works[title][:150_000]) for title in ("Hamlet", "The Tempest", "King Lear")]
    tokenizer = Tokenizer.load(train_tokenizer(sample, tmp_path / "t.model", vocab_size=1024))
    sonnets = works["Sonnets"]  # unseen in training
    ids = tokenizer.encode(sonnets)
    assert tokenizer.decode(ids) == sonnets
    stream = np.asarray([tokenizer.bos_id, *ids])
    assert tokenizer.count_bytes(stream[:-1], stream[1:]) == len(sonnets.encode("utf-8"))
    assert 2.3 < len(sonnets.encode("utf-8")) / len(ids) < 2.6  # measured 2.42 bytes/token at vocab 1024
