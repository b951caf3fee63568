"""Payload compression in frames: boundaries fixed by the length alone, the same bytes on any number of threads,
and a lossless round trip; lengths that do not add up are an error, never a wrong payload."""

from __future__ import annotations

import random

import pytest

from export.compress import COMPRESSORS, FRAME_BYTES, compress, compress_frames, decompress_frames, frame_bounds


def _data(length: int) -> bytes:
    rng = random.Random(0)
    return bytes(rng.choice(b"\x00\x00\x01\x02\xff\xfe\x03") for _ in range(length))


def test_frames_cover_the_payload_in_near_equal_slices():
    assert frame_bounds(0) == [(0, 0)] and frame_bounds(10) == [(0, 10)]
    assert frame_bounds(int(1.4 * FRAME_BYTES)) == [(0, int(1.4 * FRAME_BYTES))]  # rounds to the nearest count
    bounds = frame_bounds(25_000_001, 4_000_000)
    assert len(bounds) == 6 and bounds[0][0] == 0 and bounds[-1][1] == 25_000_001
    assert all(end == start for (_, end), (start, _) in zip(bounds, bounds[1:], strict=False))
    assert {end - start for start, end in bounds} <= {4_166_666, 4_166_667}
    assert len(frame_bounds(36_224_579)) == 18  # a golf payload: as many frames as a large machine has cores


@pytest.mark.parametrize("method", COMPRESSORS)
def test_frames_are_the_same_bytes_on_one_or_several_threads_and_round_trip(method):
    data = _data(10_000)
    one, lengths = compress_frames(data, method, workers=1, frame_bytes=1000)
    many, lengths_many = compress_frames(data, method, workers=4, frame_bytes=1000)
    assert one == many and lengths == lengths_many and len(lengths) == 10 and sum(lengths) == len(one)
    assert one[: lengths[0]] == compress(data[:1000], method)  # each frame is a stream of its own
    assert decompress_frames(one, method, lengths) == data


def test_a_single_stream_reads_without_frame_lengths():
    data = _data(3000)
    assert decompress_frames(compress(data, "zstd"), "zstd", None) == data


def test_frame_lengths_that_do_not_add_up_are_an_error():
    data = _data(4000)
    payload, lengths = compress_frames(data, "zstd", frame_bytes=1000)
    with pytest.raises(ValueError, match="frame lengths"):
        decompress_frames(payload, "zstd", [*lengths[:-1], lengths[-1] + 1])
    with pytest.raises(ValueError, match="frame lengths"):
        decompress_frames(payload, "zstd", [0, *lengths])
    with pytest.raises(ValueError, match="zstd stream does not decode"):  # lengths that add up, frames cut wrong
        decompress_frames(payload, "zstd", [lengths[0] + 1, lengths[1] - 1, *lengths[2:]])
