"""Reading .txt/.jsonl/folders into documents, and the train/validation split by document."""

from __future__ import annotations

from pathlib import Path

import pytest

from alrt_core.data.documents import Document, read_documents, split_documents
from alrt_core.errors import UserError


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def test_folder_is_read_recursively_in_sorted_order_skipping_hidden_and_other_files(tmp_path):
    write(tmp_path / "docs" / "b.txt", "second  file\n\twith a tab\n")
    write(tmp_path / "docs" / "a.jsonl", '{"text": "one"}\n\n{"text": "three", "title": "Named"}\n')
    write(tmp_path / "docs" / "sub" / "c.TXT", "nested\r\n")
    write(tmp_path / "docs" / ".hidden" / "d.txt", "skipped")
    write(tmp_path / "docs" / "notes.md", "skipped")
    write(tmp_path / "docs" / "blank.txt", " \n\t\n")  # whitespace-only: dropped
    docs = read_documents([tmp_path / "docs"])
    assert [(d.title, d.text) for d in docs] == [
        ("a.jsonl:1", "one"),
        ("Named", "three"),
        ("b.txt", "second  file\n\twith a tab\n"),
        ("c.TXT", "nested\r\n"),
    ]


def test_inputs_keep_the_order_given_and_text_is_kept_byte_for_byte(tmp_path):
    text = "  lead\u00a0nbsp, caf\u00e9, \u65e5\u672c, \U0001f3ad\n\n\n   trailing   "
    first = write(tmp_path / "z.txt", text)
    second = write(tmp_path / "a.jsonl", '{"text": "line\\u2028separator \u2028 raw"}\n')
    docs = read_documents([first, second])
    assert [d.text for d in docs] == [text, "line\u2028separator \u2028 raw"]


def test_utf8_byte_order_mark_is_not_part_of_the_text(tmp_path):
    docs = read_documents([write(tmp_path / "bom.txt", b"\xef\xbb\xbfhello")])
    assert docs == [Document("bom.txt", "hello")]


def test_non_utf8_input_names_the_file_and_byte_offset(tmp_path):
    bad = write(tmp_path / "corpus.txt", b"ok text\nmore " + b"\xff\xfe rest")
    with pytest.raises(UserError, match=r"corpus.txt: not valid UTF-8 at byte 13 \(line 2\)$"):
        read_documents([bad])
    bad_jsonl = write(tmp_path / "c.jsonl", b'{"text": "a"}\n{"text": "\xc3("}\n')
    with pytest.raises(UserError, match=r"c.jsonl: not valid UTF-8 at byte 24 \(line 2\)"):
        read_documents([bad_jsonl])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a"}\n{"body": "b"}\n', r"m.jsonl:2: JSON line has no string field 'text'"),
        ('{"text": "a"}\n\n{"text": 5}\n', r"m.jsonl:3: JSON line has no string field 'text'"),
        ('{"text": "a"}\n{"text": "b",}\n', r"m.jsonl:2: not valid JSON \(.* at column 14\)"),
        ('["text"]\n', r"m.jsonl:1: expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, content, message):
    with pytest.raises(UserError, match=message):
        read_documents([write(tmp_path / "m.jsonl", content)])


def test_missing_empty_and_unsupported_inputs(tmp_path):
    with pytest.raises(UserError, match="input not found: .*nope.txt"):
        read_documents([tmp_path / "nope.txt"])
    with pytest.raises(UserError, match="no non-empty documents in .*empty.txt"):
        read_documents([write(tmp_path / "empty.txt", "  \n\n")])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no non-empty documents"):
        read_documents([tmp_path / "empty_dir"])
    with pytest.raises(UserError, match=r"data.csv: unsupported input \(expected .txt, .jsonl"):
        read_documents([write(tmp_path / "data.csv", "a,b")])


def test_split_is_by_document_deterministic_and_keeps_order():
    docs = [Document(f"d{i}", f"text {i}\nline two of {i}") for i in range(40)]
    train, val = split_documents(docs, 0.1, seed=3)
    assert (len(train), len(val)) == (36, 4)
    assert not {d.title for d in train} & {d.title for d in val}
    assert sorted(train + val, key=lambda d: int(d.title[1:])) == docs
    assert train == sorted(train, key=lambda d: int(d.title[1:]))  # original order kept inside a part
    assert split_documents(docs, 0.1, seed=3) == (train, val)
    assert split_documents(docs, 0.1, seed=4)[1] != val


def test_split_gives_each_side_at_least_one_document_and_splits_duplicates_by_position():
    docs = [Document("same", "identical text")] * 2
    for fraction in (0.01, 0.5, 0.99):
        train, val = split_documents(docs, fraction, seed=0)
        assert (len(train), len(val)) == (1, 1)


def test_a_single_document_is_cut_at_the_paragraph_start_nearest_the_fraction():
    paragraphs = [f"Paragraph {i}.\nIts second line.\n" for i in range(20)]
    text = "\n".join(paragraphs)  # a blank line between paragraphs
    train, val = split_documents([Document("book.txt", text)], 0.1, seed=1)
    assert len(train) == len(val) == 1
    assert train[0].text + val[0].text == text  # every byte on exactly one side
    assert val[0].text.startswith("Paragraph 18.\n") and train[0].text.endswith("line.\n\n")
    assert "book.txt" in train[0].title and "paragraph" in val[0].title
    # No blank lines: the nearest line start; unicode counts characters, and bytes still add up exactly.
    lines = "".join(f"ligne {i} é\n" for i in range(10))
    head, tail = split_documents([Document("l", lines)], 0.3, seed=0)
    assert head[0].text + tail[0].text == lines and tail[0].text.startswith("ligne 7 é")
    assert len(head[0].text.encode()) + len(tail[0].text.encode()) == len(lines.encode())


def test_split_errors():
    with pytest.raises(UserError, match="only one document.*no line break.*--val-input"):
        split_documents([Document("a", "text")], 0.05, seed=1)
    with pytest.raises(UserError, match="validation fraction must be between 0 and 1"):
        split_documents([Document("a", "x"), Document("b", "y")], 1.0, seed=1)
