"""`alrt generate MODEL`: stream a continuation of a prompt, or chat interactively on a terminal."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from alrt_core.errors import UserError
from alrt_core.inference.sampling import SamplingConfig
from alrt_core.inference.session import GenerationStats, Session
from export.loader import load_model
from serve.chat import ChatSession, ChatTemplate

CHAT_HELP = "/clear forgets the conversation, /regen redoes the last reply, /stats shows speed, /exit quits"


def _stats_line(stats: GenerationStats) -> str:
    return (f"[{stats.prompt_tokens} prompt tokens, {stats.new_tokens} new, first token after "
            f"{stats.time_to_first_token * 1000:.0f} ms, {stats.tokens_per_second:.1f} tok/s, stop: {stats.stop_reason}"
            + (f", context slid {stats.slides}×" if stats.slides else "") + "]")


class InterruptFlag:
    """Ctrl-C once: stop the current reply; twice (before it ended): leave."""

    def __init__(self) -> None:
        self.raised = False
        self.previous: Any = None

    def __enter__(self) -> InterruptFlag:
        self.raised = False
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised:
            raise KeyboardInterrupt
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def generate(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A .alrt artifact, a training checkpoint, or an .onnx export (decoded by onnxruntime).")],
    prompt: Annotated[str | None, typer.Option(help="Text to continue (default: chat on a terminal, else read stdin).")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Interactive multi-turn chat.")] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Largest number of tokens to generate (per reply in chat).")] = 200,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely tokens (0: all).")] = 50,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (1: off).")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(help="> 1 discourages repeating context tokens.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="Stop when this text appears (repeatable).")] = None,
    sliding_context: Annotated[bool, typer.Option("--sliding-context", help="When the context is full, drop its older half and go on (default: stop).")] = False,
    user_name: Annotated[str, typer.Option(help="Chat: the speaker name of your turns.")] = ChatTemplate.user,
    bot_name: Annotated[str, typer.Option(help="Chat: the speaker name of the model's turns.")] = ChatTemplate.bot,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    compile_decode: Annotated[bool, typer.Option("--compile", help="Decode through a compiled step over a static KV cache (CUDA graphs on CUDA): ~3x faster per token on CPU, after a compile of tens of seconds; falls back to eager if compiling fails.")] = False,
) -> None:
    """KV-cached generation from an artifact or checkpoint; streaming text on stdout, stats on stderr."""
    sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty, seed)
    sampling.validate()
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    loaded = load_model(model_path, device=device, allow_onnx=True)
    errors = Console(stderr=True, highlight=False)
    if compile_decode and loaded.kind == "onnx":
        raise UserError("--compile needs a torch model (a .alrt artifact or a checkpoint), not an ONNX export")
    if compile_decode:
        errors.print("[dim]compiling the decode step...[/]")
    session = Session(loaded.model, loaded.tokenizer, compile_decode=compile_decode)
    step = session.decode_step
    if step is not None and step.fallback_reason is None and step.compile_seconds is not None:
        errors.print(f"[dim]decode step compiled in {step.compile_seconds:.0f} s[/]")
    interactive = chat or (prompt is None and sys.stdin.isatty())
    if interactive:
        _chat(ChatSession(session, ChatTemplate(user_name, bot_name), sampling, max_new_tokens), errors, loaded)
        return
    text = prompt if prompt is not None else sys.stdin.read()
    ids = [loaded.tokenizer.bos_id, *loaded.tokenizer.encode(text)]
    if len(ids) >= session.context and not sliding_context:
        raise UserError(f"the prompt is {len(ids)} tokens; the context holds {session.context} (use --sliding-context)")
    with InterruptFlag() as flag:
        result = session.generate(
            ids, max_new_tokens=max_new_tokens, sampling=sampling, stop=tuple(stop or ()),
            sliding_context=sliding_context, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()),
            should_stop=lambda: flag.raised,
        )
    sys.stdout.write("\n")
    errors.print(_stats_line(result.stats), style="dim")


def _chat(chat: ChatSession, errors: Console, loaded: Any) -> None:
    console = Console(highlight=False)
    console.print(f"[bold]alrt chat[/] with {loaded.source} ({loaded.kind}, context {chat.session.context} tokens). {CHAT_HELP}.")
    last: GenerationStats | None = None
    while True:
        try:
            message = console.input(f"[bold cyan]{chat.template.user}>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        command = message.strip()
        if not command:
            continue
        if command == "/exit":
            return
        if command == "/clear":
            chat.clear()
            console.print("[dim](conversation cleared)[/]")
            continue
        if command == "/stats":
            console.print(f"[dim]{_stats_line(last) if last else 'no reply yet'}; {len(chat.turns)} turns, "
                          f"{len(chat.session.history)} of {chat.session.context} context tokens used[/]")
            continue
        dropped_before = chat.dropped_turns
        console.print(f"[bold magenta]{chat.template.bot}>[/] ", end="")
        try:
            with InterruptFlag() as flag:
                kwargs = {"on_text": lambda piece: (sys.stdout.write(piece), sys.stdout.flush()),
                          "should_stop": lambda: flag.raised}
                if command == "/regen":
                    result = chat.regenerate(**kwargs)
                else:
                    result = chat.send(message, **kwargs)
        except KeyboardInterrupt:
            console.print()
            return
        except ValueError as error:
            console.print(f"[red]{error}[/]")
            continue
        sys.stdout.write("\n")
        last = result.stats
        if result.stats.stop_reason == "interrupted":
            console.print("[dim](reply stopped)[/]")
        if chat.dropped_turns > dropped_before:
            console.print(f"[dim](context full: forgot the {chat.dropped_turns - dropped_before} oldest turn(s))[/]")
