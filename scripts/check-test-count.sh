#!/usr/bin/env bash
# Checks that CTest runs every Catch2 test case exactly once:
#   scripts/check-test-count.sh BUILD_DIR
# For every executable that catch_discover_tests registered (BUILD_DIR/catch_test_binaries.txt,
# written by tests/CMakeLists.txt), it lists the cases (--list-test-names-only) and the
# CTest entries that run that executable (ctest --show-only=json-v1), and fails, naming
# them, unless each case is the argument of exactly one entry and each entry names a
# case. A name with ';' is the usual culprit: discovery splits it at the ';' (a CMake list
# separator) into entries that match no case, and the case itself never runs.
# Runs as the CTest entry catch_cases_match_ctest_entries, so `make test` checks it.
# CTEST and CMAKE name the tools (default: those on PATH).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
if [ ! -d "$1" ]; then
  echo "check-test-count: build folder $1 does not exist" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
ctest_cmd=${CTEST:-ctest}
cmake_cmd=${CMAKE:-cmake}
manifest="$build/catch_test_binaries.txt"
if [ ! -f "$manifest" ]; then
  echo "check-test-count: $manifest is missing; configure $build with cmake first" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/runway_check_test_count_XXXXXX")
trap 'rm -rf "$work"' EXIT

# The CTest entries as "executable<TAB>first argument<TAB>entry name" lines. CMake's JSON
# parser reads ctest's JSON, so names with quotes or non-ASCII characters come out right.
(cd "$build" && "$ctest_cmd" --show-only=json-v1) > "$work/ctest.json"
cat > "$work/entries.cmake" <<'EOF'
file(READ "${JSON_FILE}" json)
string(JSON count LENGTH "${json}" tests)
set(out "")
if(count GREATER 0)
  math(EXPR last "${count} - 1")
  foreach(i RANGE ${last})
    string(JSON name GET "${json}" tests ${i} name)
    string(JSON argc ERROR_VARIABLE no_command LENGTH "${json}" tests ${i} command)
    if(no_command)
      continue()
    endif()
    string(JSON exe GET "${json}" tests ${i} command 0)
    set(arg "")
    if(argc GREATER 1)
      string(JSON arg GET "${json}" tests ${i} command 1)
    endif()
    string(APPEND out "${exe}\t${arg}\t${name}\n")
  endforeach()
endif()
file(WRITE "${OUT_FILE}" "${out}")
EOF
"$cmake_cmd" -D "JSON_FILE=$work/ctest.json" -D "OUT_FILE=$work/entries.tsv" -P "$work/entries.cmake"

total_cases=0
total_entries=0
failed=0
while IFS=$'\t' read -r target exe; do
  [ -n "$target" ] || continue
  if [ ! -x "$exe" ]; then
    echo "FAIL $target: $exe is not built" >&2
    failed=1
    continue
  fi
  # Catch2 exits with the number of cases here, not 0.
  "$exe" --list-test-names-only > "$work/cases.txt" || true
  awk -F'\t' -v exe="$exe" '$1 == exe' "$work/entries.tsv" > "$work/mine.tsv"
  # Catch2 reads the entry's argument as a test spec: a backslash escapes the next
  # character (discovery writes "\," "\[" "\]"). Undo that to get the case it names.
  report=$(awk -F'\t' -v target="$target" '
    function unescape(s,    out, c) {
      out = ""
      while (length(s) > 0) {
        c = substr(s, 1, 1)
        if (c == "\\" && length(s) > 1) { c = substr(s, 2, 1); s = substr(s, 3) } else s = substr(s, 2)
        out = out c
      }
      return out
    }
    FNR == NR { if ($0 != "") { ncases++; is_case[$0] = 1; order[ncases] = $0 } next }
    { nentries++; runs[unescape($2)]++; if (!(unescape($2) in is_case)) extra[++nextra] = $3 " (argument: " $2 ")" }
    END {
      bad = 0
      for (i = 1; i <= ncases; i++) {
        name = order[i]
        if (index(name, ";") > 0) {
          printf "FAIL %s: case \"%s\" has a semicolon in its name, which CMake splits into several entries (use a comma or \"and\")\n", target, name
          bad = 1
        }
        if (runs[name] != 1) {
          printf "FAIL %s: case \"%s\" is run by %d CTest entries, not 1\n", target, name, runs[name] + 0
          bad = 1
        }
      }
      for (i = 1; i <= nextra; i++) {
        printf "FAIL %s: CTest entry \"%s\" names no case\n", target, extra[i]
        bad = 1
      }
      printf "%s\t%d\t%d\t%d\n", target, ncases, nentries, bad
    }' "$work/cases.txt" "$work/mine.tsv")
  summary=$(printf '%s\n' "$report" | tail -n 1)
  printf '%s\n' "$report" | sed '$d' >&2
  IFS=$'\t' read -r _ cases entries bad <<< "$summary"
  echo "$target: $cases cases, $entries CTest entries"
  total_cases=$((total_cases + cases))
  total_entries=$((total_entries + entries))
  [ "$bad" = 0 ] || failed=1
done < "$manifest"

echo "Catch2 cases in the binaries: $total_cases; CTest entries that run them: $total_entries"
if [ "$failed" != 0 ]; then
  echo "check-test-count: some Catch2 cases are not exactly one CTest entry (see FAIL lines above)" >&2
  exit 1
fi
