#!/usr/bin/env bash
# The README's second command: set up (scripts/setup.sh), then lint (ruff), type-check (mypy) and
# run the tests (pytest). Arguments go to pytest: `scripts/test.sh --run-slow` adds the slow tests,
# `scripts/test.sh tests/unit -x` runs a subset. Every check runs; the exit status is non-zero
# if any of them failed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

bash scripts/setup.sh

venv=$repo/.venv
failed=()
check() {
    local name=$1
    shift
    printf '\n== %s\n' "$name"
    if "$@"; then
        printf '%s: passed\n' "$name"
    else
        printf '%s: FAILED (exit %s)\n' "$name" "$?"
        failed+=("$name")
    fi
}

check "ruff" "$venv/bin/ruff" check .
check "mypy" "$venv/bin/mypy"
check "pytest" "$venv/bin/pytest" -q "$@"

echo
if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "test.sh: all passed (ruff, mypy, pytest)"
