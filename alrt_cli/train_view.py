"""Console rendering of training events: a summary at start, one line per log interval, eval lines.

On a terminal a rich progress bar sits under the lines; otherwise (pipes, CI, files) only plain lines appear.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _fmt_tokens(count: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return f"{count:.0f}"


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class TrainConsole:
    """A train.jsonl listener that prints what a person watching the run needs."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.progress: Progress | None = None
        self.task: Any = None
        self.log_every = 1
        self.by_time = False

    def __call__(self, event: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{event['event']}", None)
        if handler is not None:
            handler(event)

    def _print(self, text: str, *, markup: bool = True) -> None:
        console = self.progress.console if self.progress else self.console
        console.print(text, markup=markup)
        console.file.flush()  # piped output (tee, CI logs) should show each line as it happens

    def _on_run_start(self, e: dict[str, Any]) -> None:
        self.log_every = e["log_every"]
        ranks = "dense" if e["rank_min"] is None else f"ranks {e['rank_min']}/{e['rank_mean']}/{e['rank_max']}"
        share = e["projection_params"] / max(e["dense_projection_params"], 1)
        policy = f"rank policy {e['rank_policy']}"
        if e["rank_update_every"]:
            policy += f", updates every {e['rank_update_every']} steps"
        if e["rank_budget"]:
            policy += f", budget {e['rank_budget']:,.0f} {e['rank_budget_unit']}"
        lines = [
            f"[bold]alrt train[/] → {e['run_dir']}" + (f"  (resumed from {e['resumed_from']})" if e["resumed_from"] else ""),
            f"  model    {e['params']:,} params, vocab {e['vocab_size']}, {ranks}, preset {e['preset']}",
            f"  artifact {e['artifact_packed_bytes'] / 1e6:.2f} MB int6 before compression, "
            f"est. {e['artifact_estimate_bytes'] / 1e6:.2f} MB after training",
            f"  ranks    {policy}; attention+MLP {e['projection_params']:,} params = {share:.0%} of dense",
            f"  data     {_fmt_tokens(e['tokens_per_epoch'])} tokens/epoch, val {_fmt_tokens(e['val_tokens'])} tokens "
            f"= {e['val_bytes']:,} bytes",
            f"  scale    {e['tokens_per_param_epoch']:.1f} tokens/param per epoch "
            f"({e['chinchilla_fraction_epoch']:.2f}× Chinchilla's 20:1"
            + (f"; planned run {e['chinchilla_fraction_planned']:.2f}×)" if e["chinchilla_fraction_planned"] else ")"),
            f"  baseline uniform over the vocabulary: loss {e['uniform_loss']:.3f} nats = {e['uniform_bpb']:.3f} bpb",
            f"  batch    {e['batch_tokens']:,} tokens/step on {e['world_size']} process(es), "
            f"{e['accumulation']} micro-step(s) of {e['micro_batch_sequences']} sequences"
            + (" (split to fit CPU memory)" if e.get("micro_batch_capped") else "") + f", {e['device']} {e['precision']}"
            + (", compiled" if e["compiled"] else ""),
        ]
        probe = e.get("precision_probe")
        if probe and probe.get("fp32_gflops") is not None:
            lines.append(f"  precision {probe['chosen']} (auto): this model's matmuls ran fp32 {probe['fp32_gflops']:,.0f} "
                         f"vs bf16 {probe['bf16_gflops']:,.0f} GFLOP/s in a {probe['seconds']:.2f} s probe")
        for line in lines:
            self.console.print(line)
        if self.console.is_terminal:
            self.by_time = e["max_steps"] is None
            total = e["max_minutes"] * 60.0 if self.by_time else float(e["max_steps"])
            self.progress = Progress(
                TextColumn("[progress.description]{task.description}"), BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("training", total=total, completed=0.0 if self.by_time else e["step"])
        self.console.print("[dim]  step | loss   | bpb    | lr       | tok/s   | rank min/mean/max | elapsed[/]")

    def _on_train_step(self, e: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task, completed=e["elapsed"] if self.by_time else e["step"],
                description=f"step {e['step']} loss {e['loss']:.3f}",
            )
        if e["step"] % self.log_every and e["step"] != 1:
            return
        ranks = "dense" if e["rank_min"] is None else f"{e['rank_min']}/{e['rank_mean']:.1f}/{e['rank_max']}"
        self._print(
            f"{e['step']:>6} | {e['loss']:.4f} | {e['bpb']:.4f} | {e['lr']:.2e} | {e['tok_s']:>7,.0f} | "
            f"{ranks:>17} | {_fmt_time(e['elapsed'])}"
        )

    def _on_eval(self, e: dict[str, Any]) -> None:
        mark = " [green]best[/]" if e["improved"] else ""
        scope = "" if e["full"] else f" ({_fmt_tokens(e['val_tokens'])} tokens)"
        if not e.get("compared", True):
            scope += " (whole split, not compared)"
        self._print(f"  [bold cyan]eval[/] step {e['step']}: val loss {e['val_loss']:.4f}, val bpb {e['val_bpb']:.4f}{scope}{mark}")

    def _on_rank_update(self, e: dict[str, Any]) -> None:
        ranks = f"{e['rank_min']}/{e['rank_mean']:.1f}/{e['rank_max']}"
        budget = ""
        if e["budget"]:
            budget = f" | {e['budget_unit']} {e['budget_estimate']:,.0f}/{e['budget']:,.0f}, pressure {e['pressure']:.3f}"
        self._print(
            f"  [magenta]rank_update[/] @ {e['step']} | changed {e['changed']}/{e['layers']} | "
            f"params {_fmt_tokens(e['params_before'])} → {_fmt_tokens(e['params_after'])} | r {ranks} | "
            f"took {e['seconds']:.2f}s{budget}"
        )

    def _on_qat_on(self, e: dict[str, Any]) -> None:
        self._print(f"  [bold]late QAT[/] on at step {e['step']}: LR multiplier {e['lr_scale']:.3f}, int{e['bits']} fake quantisation")

    def _on_sample(self, e: dict[str, Any]) -> None:
        self._print(f"  [bold yellow]sample[/] @ {e['step']}:")
        self._print((e["prompt"] + e["text"]).strip("\n"), markup=False)

    def _on_error(self, e: dict[str, Any]) -> None:
        self._stop_progress()

    def _on_run_end(self, e: dict[str, Any]) -> None:
        self._stop_progress()
        best = e["best_val_bpb"]
        self.console.print(
            f"[bold]done[/] ({e['reason']}) after {e['step']} steps, {_fmt_tokens(e['tokens'])} tokens, "
            f"{_fmt_time(e['elapsed'])}: final val bpb {e['final_val_bpb']:.4f}"
            + (f", best {best:.4f}" if best is not None and math.isfinite(best) else "")
        )

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
