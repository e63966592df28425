#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine, as root (the README's test
# command, which .ci/run runs):
#
#     bash tests/run.sh
#
# 1. apt-get installs Debian's chromium and redis-server (and nodejs and npm
#    when the machine has no node: the bench and peer smoke tests use them).
# 2. Two virtualenvs, each with wsglue and its test extra: .venv with the
#    newest set tested (constraints/newest.txt) and .venv-floor with the
#    floor set (constraints/floor.txt), the two ends of setup.py's ranges.
# 3. ruff and mypy on the newest set (once pyproject.toml configures them),
#    then the trial suite: on the newest set with the speed levers on (the
#    default) and with WSGLUE_NO_LEVERS=1, on the floor set with the levers
#    (the version-sensitive path).
#
# Every check runs even when one before it failed; the script ends with one
# line per check, the time of each part, and "N passed, M failed" (counting
# the checks), and exits non-zero if any failed.

set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

results=()  # one line per check, for the summary
timings=()  # one line per part
passed=0
failed=0

banner() {
    printf '\n==== %s ====\n\n' "$*"
}

# timed NAME COMMAND...: run COMMAND, note its time; the script stops here
# if it fails (nothing can be checked without it).
timed() {
    local name=$1 start=$SECONDS
    shift
    banner "$name: $*"
    if ! "$@"; then
        echo "tests/run.sh: $name failed, so no check was run" >&2
        exit 1
    fi
    timings+=("$(printf '%-24s %4ds' "$name" $((SECONDS - start)))")
}

# check NAME COMMAND...: run COMMAND whatever happens to it; a failure is
# counted, not fatal.  Its output goes to the terminal and to a log.
check() {
    local name=$1 start=$SECONDS log="$logs/${1//\//_}.log" status verdict detail
    shift
    banner "$name: $*"
    if "$@" 2>&1 | tee "$log"; then status=0; else status=$?; fi
    local took=$((SECONDS - start))
    # trial's closing lines: "Ran N tests in ...s", "PASSED (skips=4, successes=627)"
    detail=$(sed -n 's/^Ran \([0-9]*\) tests\{0,1\} in .*/\1 tests/p' "$log" | tail -n 1)
    local tally
    tally=$(sed -n 's/^\(PASSED\|FAILED\) (\(.*\))$/\2/p' "$log" | tail -n 1)
    detail="$detail${tally:+: $tally}"
    if [ "$status" -eq 0 ]; then
        verdict=PASSED
        passed=$((passed + 1))
    else
        verdict=FAILED
        detail="${detail:+$detail; }exit status $status"
        failed=$((failed + 1))
    fi
    results+=("$name: $verdict${detail:+ ($detail)}")
    timings+=("$(printf '%-24s %4ds' "$name" "$took")")
}

# hasTool NAME: pyproject.toml has a [tool.NAME] (or [tool.NAME.…]) section.
hasTool() {
    [ -f pyproject.toml ] && grep -Eq "^\[+tool\.$1(\]|\.)" pyproject.toml
}

# trialRun NAME VENV LEVERS [ONCE]: the trial suite in VENV, levers on or
# off; ONCE=0 skips the slow tests that need to run only once (the
# benchmarks' smoke runs, the cluster presence tests that wait out a dead
# worker: see tests.common.onceInCI), so that the three runs stay well
# under 15 minutes on 2 cores.
trialRun() {
    local name=$1 venv=$2 levers=$3 once=${4:-1}
    if [ "$levers" = on ]; then
        check "$name" env -u WSGLUE_NO_LEVERS ONCE_TESTS="$once" "$venv/bin/python" -m twisted.trial tests
    else
        check "$name" env WSGLUE_NO_LEVERS=1 ONCE_TESTS="$once" "$venv/bin/python" -m twisted.trial tests
    fi
}

start=$SECONDS

timed "apt-get" sh -c 'apt-get update && apt-get install -y chromium redis-server &&
    { command -v node >/dev/null && command -v npm >/dev/null || apt-get install -y nodejs npm; }'
timed "venv newest" sh -c "python3 -m venv .venv && .venv/bin/pip install -c constraints/newest.txt '.[test]'"
timed "venv floor" sh -c "python3 -m venv .venv-floor && .venv-floor/bin/pip install -c constraints/floor.txt '.[test]'"

for set in newest floor; do
    if [ "$set" = newest ]; then venv=.venv; else venv=.venv-floor; fi
    # Lint and types once, on the newest set (the code is the same).
    if [ "$set" = newest ]; then
        if hasTool ruff; then
            check "$set/ruff" "$venv/bin/python" -m ruff check wsglue tests bench
            check "$set/format" "$venv/bin/python" -m ruff format --check wsglue tests bench
        else
            results+=("$set/ruff: skipped (no [tool.ruff] in pyproject.toml)")
        fi
        if hasTool mypy; then
            check "$set/mypy" "$venv/bin/python" -m mypy
        else
            results+=("$set/mypy: skipped (no [tool.mypy] in pyproject.toml)")
        fi
    fi
    if [ "$set" = newest ]; then
        trialRun "$set/levers" "$venv" on
    else
        trialRun "$set/levers" "$venv" on 0
    fi
    # The plain path uses only the libraries' public API: once, on the
    # newest set, keeps the whole run well under 15 minutes on 2 cores.
    if [ "$set" = newest ]; then
        trialRun "$set/no-levers" "$venv" off 0
    fi
done

banner "summary"
printf '%s\n' "${results[@]}"
echo
echo "time of each part:"
printf '  %s\n' "${timings[@]}"
printf '  %-24s %4ds\n' "total" $((SECONDS - start))
echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
