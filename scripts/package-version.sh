#!/usr/bin/env bash
# Prints the Debian package version derived from git: a tag vX.Y.Z gives X.Y.Z, commits after it
# X.Y.Z+git<date>.<n>.<sha>; without a tag 0.0~git<date>.<count>.<sha> (the commit's date, UTC,
# and its number of ancestors: the version of a commit never changes, and later commits sort
# higher; "~" sorts before any release 0.0). Uncommitted changes add ".dirty". Every form is a valid Debian version (digits first; letters, digits, . + ~ only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
sha="$(git rev-parse --short=12 HEAD)"
date="$(TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d HEAD)"
dirty=""
git diff --quiet HEAD -- 2>/dev/null || dirty=".dirty"
if described="$(git describe --tags --match 'v[0-9]*' --long HEAD 2>/dev/null)"; then
    # vX.Y.Z-N-gSHA
    tag="${described%-*-g*}"
    rest="${described#"$tag"-}"
    n="${rest%%-g*}"
    base="${tag#v}"
    if [[ "$n" == 0 && -z "$dirty" ]]; then version="$base"; else version="$base+git$date.$n.$sha$dirty"; fi
else
    version="0.0~git$date.$(git rev-list --count HEAD).$sha$dirty"
fi
# Anything else a tag might carry becomes "+" (hyphens would start a Debian revision).
version="$(tr -c 'A-Za-z0-9.+~\n' '+' <<<"$version")"
[[ "$version" =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || { echo "package-version: '$version' is not a Debian version" >&2; exit 1; }
echo "$version"
