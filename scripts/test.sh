#!/usr/bin/env bash
# The README's second command: set up (scripts/setup.sh), then lint (ruff), type-check (mypy) and
# run the tests (pytest), then the mount tests once more in FUSE's open mode. Arguments go to
# pytest: `scripts/test.sh --run-slow` adds the slow tests, `scripts/test.sh tests/unit -x` runs
# a subset (and skips the second pass). Every check runs; the exit status is non-zero if any of
# them failed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

bash scripts/setup.sh

venv=$repo/.venv
failed=()
checks=()
check() {
    local name=$1
    shift
    printf '\n== %s\n' "$name"
    if "$@"; then
        printf '%s: passed\n' "$name"
        checks+=("$name")
    else
        printf '%s: FAILED (exit %s)\n' "$name" "$?"
        failed+=("$name")
    fi
}

check "ruff" "$venv/bin/ruff" check .
check "mypy" "$venv/bin/mypy"
check "import layering" "$venv/bin/lint-imports" --no-cache
check "pytest" "$venv/bin/pytest" -q "$@"
# The mount tests once more with the kernel sending OPEN/RELEASE (as with a stock pyfuse3; the
# patched one runs in FUSE's no-open mode), unless only a subset was asked for.
only_options=1
for arg in "$@"; do [[ $arg == -* ]] || only_options=0; done
if ((only_options)); then
    check "pytest, open mode" env STRATA_FUSE_OPEN=1 "$venv/bin/pytest" -q "$@" tests/fuse tests/model
fi

echo
if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "test.sh: all passed (${checks[*]})"
