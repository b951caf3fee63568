"""Helpers shared by the tests that need a run: a real (tiny) trained one, or an untrained checkpoint in a second; and
`alrt serve` running on loopback for the tests that serve one."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import torch
from model_helpers import perturb
from prometheus_client.parser import text_string_to_metric_families

from alrt_core.config import ModelConfig, apply_overrides, preset
from alrt_core.model.gpt import GPT, uniform_ranks
from alrt_core.training.checkpoint import save_checkpoint
from alrt_core.training.trainer import Trainer

if TYPE_CHECKING:
    import openai

    from export.loader import LoadedModel
    from serve.limits import ServeLimits
    from serve.worker import Job


def train_tiny(run_dir: Path, data_root: Path, *overrides: str) -> Path:
    """Train the `tiny` preset on the prepared data at `data_root` with `overrides`; returns the run directory."""
    config = preset("tiny")
    config.data.path = str(data_root)
    Trainer(apply_overrides(config, list(overrides)), run_dir, progress=False).run()
    return run_dir


def tiny_checkpoint(run_dir: Path, data_root: Path, tokenizer: Path, *, rank: int = 6, **model: Any) -> Path:
    """`run_dir/last.pt` of an untrained, perturbed 2-block model (vocab 384, width 32) whose run data is `data_root`,
    with `tokenizer` beside it as the run's; `model` overrides ModelConfig fields. For tests of the quantizer that
    need a checkpoint, not a trained one: no training step, so it takes well under a second."""
    config = preset("tiny")
    config.data.path, config.data.vocab_size = str(data_root), 384
    config.model = ModelConfig(vocab_size=384, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2.0,
                               seq_len=48, **model)
    torch.manual_seed(0)
    network = perturb(GPT(config.model, layer_ranks=uniform_ranks(config.model, rank)), scale=0.05)
    run_dir.mkdir(parents=True)
    save_checkpoint(run_dir / "last.pt", {"config": config.to_dict(), "model": network.state_dict(), "ema": None,
                                          "ranks": network.layer_ranks(), "step": 0})
    shutil.copy(tokenizer, run_dir / "tokenizer.model")
    return run_dir / "last.pt"


class RunningServer:
    """`create_app` under uvicorn on a free loopback port, in a background thread; the model is named "tiny".

    The server's libraries are imported when a test starts one: the tests that only train or quantize share this
    module without loading (or depending on) serve/, uvicorn and openai."""

    def __init__(self, loader: Callable[[], LoadedModel], limits: ServeLimits | None = None,
                 before_job: Callable[[Job], None] | None = None, strict_model: bool = False) -> None:
        import uvicorn

        from serve.limits import ServeLimits
        from serve.server import bind_socket, create_app

        self.app = create_app(loader, model_name="tiny", limits=limits or ServeLimits(threads=None),
                              before_job=before_job, strict_model=strict_model)
        self.worker = self.app.state.worker
        sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        # The socket is bound but listens only once uvicorn has started: a request before that is refused.
        self.wait_until(lambda: self.server.started or not self.thread.is_alive(), "uvicorn to start")

    def client(self) -> openai.OpenAI:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="x", max_retries=0, timeout=30)

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/health", timeout=10)

    def metrics(self) -> dict[str, float]:
        """`GET /metrics` parsed, by sample written as in the exposition: `name{label="value",...}`, labels sorted."""
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return {sample_key(sample.name, sample.labels): sample.value
                for family in text_string_to_metric_families(response.text) for sample in family.samples}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def sample_key(name: str, labels: dict[str, str]) -> str:
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{pairs}}}" if pairs else name
