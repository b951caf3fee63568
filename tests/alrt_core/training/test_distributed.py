"""Leaving the process group: after a clean run every process drops stale work and meets the others first."""

from __future__ import annotations

import pytest

from alrt_core.training import distributed


@pytest.mark.parametrize(("clean", "expected"), [(True, ["gc", "barrier", "destroy"]), (False, ["destroy"])])
def test_shutdown_waits_for_every_process_only_after_a_clean_run(monkeypatch, clean, expected):
    calls: list[str] = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    monkeypatch.setattr(distributed.gc, "collect", lambda: calls.append("gc"))
    distributed.shutdown_distributed(clean=clean)
    assert calls == expected


def test_shutdown_without_a_process_group_does_nothing(monkeypatch):
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: pytest.fail("no group to wait in"))
    distributed.shutdown_distributed()


def test_the_tiny_preset_never_depends_on_a_timing_probe(monkeypatch):
    # Tests compare runs of different processes (torchrun against one process): a measured precision choice could
    # differ between them on a busy machine (seen: fp32 timed at 0.03 GFLOP/s for a moment under load).
    from alrt_core.config import preset
    from alrt_core.precision import resolve_autocast

    assert preset("tiny").train.autocast == "off"
    monkeypatch.setattr("alrt_core.precision._rate", lambda *args: pytest.fail("the tiny preset must not probe"))
    assert resolve_autocast(preset("tiny").train.autocast, distributed.resolve_device("cpu")) is False
