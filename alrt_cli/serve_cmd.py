"""`alrt serve MODEL`: an OpenAI-compatible HTTP server for an artifact or checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from alrt_core.errors import UserError
from export.artifact import is_artifact
from export.loader import load_model
from serve.chat import ChatTemplate
from serve.limits import ServeLimits, default_parallel

if TYPE_CHECKING:
    from serve.worker import ModelWorker


def serve(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A .alrt artifact, a training checkpoint, or an .onnx export (decoded by onnxruntime).")],
    host: Annotated[str, typer.Option(help="Interface to listen on (loopback by default; 0.0.0.0 exposes it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8000,
    parallel: Annotated[int | None, typer.Option(help="Requests decoded at once, batched (default: 8 per CPU core, at most 32).")] = None,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait for a slot beyond --parallel; more get HTTP 429.")] = 16,
    max_tokens_cap: Annotated[int, typer.Option(help="The largest max_tokens a request may ask for.")] = 512,
    max_prompt_tokens: Annotated[int | None, typer.Option(help="Longest prompt in tokens (default: the model's context).")] = None,
    model_name: Annotated[str | None, typer.Option(help="The model id the server reports (default: the file stem).")] = None,
    strict_model: Annotated[bool, typer.Option("--strict-model", help="Refuse requests whose `model` is not that id (HTTP 400); by default any name is served.")] = False,
    user_name: Annotated[str, typer.Option(help="Chat template: the speaker name of user turns.")] = ChatTemplate.user,
    bot_name: Annotated[str, typer.Option(help="Chat template: the speaker name of assistant turns.")] = ChatTemplate.bot,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    threads: Annotated[int, typer.Option(help="torch threads for decoding (1 is fastest for small models on CPU).")] = 1,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request on stderr.")] = False,
) -> None:
    """Serve /v1/completions and /v1/chat/completions (OpenAI shapes, SSE streaming); the URL goes to stderr."""
    if not model_path.is_file():
        raise UserError(f"no such model file: {model_path}")
    if model_path.suffix != ".onnx" and not is_artifact(model_path) and not _looks_like_checkpoint(model_path):
        raise UserError(f"{model_path} is neither a .alrt artifact, a training checkpoint nor an .onnx export")
    limits = ServeLimits(default_parallel() if parallel is None else parallel, max_queue, max_tokens_cap,
                         max_prompt_tokens, threads)
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    name = model_name or model_path.stem
    # FastAPI and uvicorn load here, not when the CLI starts: every other command stays quick to start.
    from serve.server import bind_socket, create_app, run_server

    sock = bind_socket(host, port)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    app = create_app(lambda: load_model(model_path, device=device, allow_onnx=True), model_name=name,
                     limits=limits,
                     template=ChatTemplate(user_name, bot_name), strict_model=strict_model)
    worker: ModelWorker = app.state.worker
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    errors.print(f"alrt serve: http://{shown_host}:{bound_port}/v1  (model {name!r}, loading {model_path})")

    def ready(done: ModelWorker) -> None:
        loaded = done.loaded
        assert loaded is not None
        errors.print(f"ready: {loaded.kind}, context {loaded.model.config.seq_len} tokens, loaded in "
                     f"{done.load_seconds:.1f} s; Ctrl-C stops")

    worker.on_ready = ready
    run_server(app, sock, access_log=access_log)
    if worker.state == "failed":
        raise UserError(worker.error if str(model_path) in worker.error else f"could not load {model_path}: {worker.error}")


def _looks_like_checkpoint(path: Path) -> bool:
    """`torch.save` writes a zip archive; anything else cannot be a checkpoint (checked before binding the port)."""
    with path.open("rb") as stream:
        return stream.read(4) == b"PK\x03\x04"
