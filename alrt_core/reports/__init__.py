"""Reports on runs, checkpoints and artifacts: the data behind `alrt inspect` (rendering is the CLI's job)."""
