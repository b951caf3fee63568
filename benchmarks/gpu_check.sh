#!/usr/bin/env bash
# The GPU machine's entry point for benchmarks/gpu_check.py (issue #17). That machine has no network: the packages its
# image lacks come as wheels in .whl/ (python benchmarks/gpu_check.py --download-wheels, here). What pip does is
# handed to the check, which records it as its `install` step and fails there if the wheels would not install.
#
#   bash benchmarks/gpu_check.sh --data data/gpu_check [gpu_check.py options]
#
# Runs from the repository root whatever the current folder (relative paths in the options are taken from there);
# PYTHON (default python3) is the interpreter that has torch.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
log=$(mktemp "${TMPDIR:-/tmp}/gpu_check_install.XXXXXX")

wheels=none
if compgen -G ".whl/*.whl" >/dev/null; then
    wheels=failed
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl >>"$log" 2>&1; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        wheels=ok
    fi
fi

# The `alrt` entry point (pyproject's [project.scripts]). Optional: the check runs every command as
# `python -m alrt_cli` from this checkout, so a failure here is recorded as a warning only.
editable=failed
if "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$log" 2>&1; then
    editable=ok
fi

exec "$PYTHON" benchmarks/gpu_check.py --wheels "$wheels" --editable "$editable" --install-log "$log" "$@"
