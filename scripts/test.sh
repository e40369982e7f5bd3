#!/usr/bin/env bash
# The README's second command: set up (scripts/setup.sh), then lint (ruff), type-check (mypy) and
# run the tests (pytest) with the patched pyfuse3 in .venv, then the union's own tests once more
# in each other FUSE mode: no-open (.venv, STRATA_PASSTHROUGH=off) and the stock pyfuse3 3.5.0
# from PyPI in .venv-stock (what `pip install strata` gives; FUSE's open mode, no listing cache,
# no spin). Arguments go to pytest: `scripts/test.sh --run-slow` adds the slow tests,
# `scripts/test.sh tests/unionfs -x` runs a subset (and skips the other modes). Every check runs;
# the exit status is non-zero if any of them failed.
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
check "import layering" "$venv/bin/lint-imports" --no-cache
# --durations: the slowest tests in the log, to see where CI's minutes go
check "pytest" "$venv/bin/pytest" -q --durations=30 "$@"
# The tests that need no root once more as a normal user (each root-only test skips itself), so
# the pure core keeps running unprivileged; as root only, and only where `nobody` can read the
# checkout (a clone under /root cannot be).
if ((only_options)) && ((EUID == 0)); then
    if runuser -u nobody -- test -r "$repo/pyproject.toml" -a -x "$venv/bin/python"; then
        nobody_home=$(mktemp -d)
        chown nobody "$nobody_home"
        check "pytest as nobody" runuser -u nobody -- env HOME="$nobody_home" \
            "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/unionfs tests/runtime tests/strata
        rm -rf "$nobody_home"
    else
        echo "pytest as nobody: skipped (nobody cannot read $repo)"
    fi
fi
# The union in its other FUSE modes, on the tests that mount it directly: the runtime and image
# tests above already ran their containers over it. As root the pass above ran in passthrough
# mode (FUSE passthrough, the default where the kernel allows it); the next one runs the patched
# pyfuse3's no-open mode (rootless mounts' mode, `-o passthrough=off`; the pass as nobody above
# ran tests/unionfs in it) on the FUSE tests, the POSIX suite and the differential and property
# tests against kernel overlayfs; the last one the stock pyfuse3 (what `pip install strata`
# gives: FUSE's open mode, no listing cache, no spin) on the FUSE tests and the POSIX suite,
# where tests that need a patched feature skip or xfail with the feature's name. CI has 25
# minutes. NOOPEN_TESTS and STOCK_TESTS choose others.
noopen_tests=(${NOOPEN_TESTS:-tests/fuse tests/model})
stock_tests=(${STOCK_TESTS:-tests/fuse})
if ((only_options)) && ((EUID == 0)); then
    check "pytest, no-open mode" env STRATA_PASSTHROUGH=off "$venv/bin/pytest" -q "$@" \
        "${noopen_tests[@]}"
fi
if ((only_options)); then
    check "pytest, stock pyfuse3" "$venv_stock/bin/pytest" -q "$@" "${stock_tests[@]}"
fi
echo
if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "test.sh: all passed (${checks[*]})"
