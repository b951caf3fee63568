"""The `alrt` command line: a Typer app that parses, calls one library function, and renders with rich."""
