"""Root of the `alrt` command: command groups and the user-error boundary."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from alrt_cli import data_cmd, eval_cmd, export_cmd, generate_cmd, inspect_cmd, quantize_cmd, serve_cmd, train_cmd
from alrt_core.errors import UserError

app = typer.Typer(
    name="alrt",
    help="Adaptive low-rank training of small GPTs, shipped as byte-budgeted artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_cmd.app, name="data")
app.command("train")(train_cmd.train)
app.command("quantize")(quantize_cmd.quantize)
app.command("eval")(eval_cmd.evaluate_command)
app.command("generate")(generate_cmd.generate)
app.command("serve")(serve_cmd.serve)
app.add_typer(inspect_cmd.app, name="inspect")
app.add_typer(export_cmd.app, name="export")

error_console = Console(stderr=True, highlight=False, soft_wrap=True)


def main() -> None:
    try:
        app()
    except UserError as error:
        # One line on stderr, exit 2, no traceback: the user can fix this.
        error_console.print(f"[bold red]error:[/] {error}", markup=True)
        sys.exit(UserError.exit_code)
