"""`python -m alrt_cli ...` (what torchrun launches)."""

from alrt_cli.app import main

if __name__ == "__main__":
    main()
