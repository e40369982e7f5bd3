#!/usr/bin/env bash
# The README's second command: set up (scripts/setup.sh), then lint (ruff), type-check (mypy) and
# run the tests (pytest) with the patched pyfuse3 in .venv, then the tests that reach pyfuse3
# once more in .venv-stock, over the stock pyfuse3 3.5.0 from PyPI (what `pip install strata`
# gives; FUSE's open mode, no listing cache, no spin). Arguments go to pytest:
# `scripts/test.sh --run-slow` adds the slow tests, `scripts/test.sh tests/unit -x` runs a subset
# (and skips the stock pass). Every check runs; the exit status is non-zero if any of them failed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# The stock pass runs unless only a subset was asked for (any argument that is not an option).
only_options=1
for arg in "$@"; do [[ $arg == -* ]] || only_options=0; done

if ((only_options)); then
    bash scripts/setup.sh --stock
else
    bash scripts/setup.sh
fi

venv=$repo/.venv
venv_stock=$repo/.venv-stock
failed=()
checks=()
check() {
    local name=$1 start=$SECONDS
    shift
    printf '\n== %s\n' "$name"
    if "$@"; then
        printf '%s: passed (%d s)\n' "$name" $((SECONDS - start))
        checks+=("$name")
    else
        printf '%s: FAILED (exit %s, %d s)\n' "$name" "$?" $((SECONDS - start))
        failed+=("$name")
    fi
}

check "ruff" "$venv/bin/ruff" check .
check "mypy" "$venv/bin/mypy"
check "pytest" "$venv/bin/pytest" -q "$@"
# With the stock pyfuse3: every test directory that mounts strata or runs a container (the union
# daemon is where pyfuse3 runs). Not tests/unit (the core, which never imports pyfuse3), nor
# tests/images and tests/bench (they mount through the same daemon and the same code paths as
# tests/runtime and tests/fuse, and would add minutes; STOCK_TESTS overrides the list).
# Tests that need a patched feature skip or xfail with the feature's name.
stock_tests=(${STOCK_TESTS:-tests/fuse tests/model tests/runtime tests/test_cli.py})
if ((only_options)); then
    check "pytest, stock pyfuse3" "$venv_stock/bin/pytest" -q "$@" "${stock_tests[@]}"
fi
echo
if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "test.sh: all passed (${checks[*]})"
