#!/usr/bin/env python3
"""Lists C++/CUDA function bodies longer than a limit (default 80 lines).

Usage: scripts/long_functions.py [--limit N] [--all] [--check] [DIR_OR_FILE ...]
       (default dirs: engine nn apps lab viz cuda, relative to the repository root)

A function's length runs from the line of its parameter list's '(' (a `template <...>`
line above it is not counted) to the line of its closing brace. Only outermost
functions are measured: lambdas and local classes count towards the function that holds
them. Comments, string and character literals (raw strings too) and preprocessor lines
are blanked before braces are matched. Functions whose names match KNOWN_TABLES are data
tables, which the line limit does not cover; they are listed only with --all.
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIRS = ["engine", "nn", "apps", "lab", "viz", "cuda"]
EXTENSIONS = (".cpp", ".cc", ".h", ".hpp", ".cu", ".cuh")
# Data tables: one row per op or per config field, long by nature.
KNOWN_TABLES = re.compile(r"(_op_entries|_fields|field_table|_table)$")
CONTROL = re.compile(r"^(if|for|while|switch|catch|else|do|try|return)\b")


def blank_code(text):
    """The text with comments, literals and preprocessor lines replaced by spaces
    (newlines kept, so line numbers stay)."""
    out = []
    i, n = 0, len(text)
    at_line_start = True
    while i < n:
        c = text[i]
        if at_line_start and c == "#":  # a preprocessor line, with its continuations
            while i < n and not (text[i] == "\n" and text[i - 1] != "\\"):
                out.append("\n" if text[i] == "\n" else " ")
                i += 1
            continue
        if c == "\n":
            at_line_start = True
            out.append(c)
            i += 1
            continue
        if not c.isspace():
            at_line_start = False
        if text.startswith("//", i):
            while i < n and text[i] != "\n":
                out.append(" ")
                i += 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.extend("\n" if ch == "\n" else " " for ch in text[i:end])
            i = end
            continue
        m = re.match(r'R"([^(\s]*)\(', text[i:i + 20])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = ")" + m.group(1) + '"'
            end = text.find(close, i + m.end())
            end = n if end < 0 else end + len(close)
            out.extend("\n" if ch == "\n" else " " for ch in text[i:end])
            i = end
            continue
        if c in "\"'":
            if c == "'" and i > 0 and text[i - 1].isalnum() and text[i - 1 : i + 2].strip("'").isdigit():
                out.append(" ")  # a digit separator such as 100'000
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.extend(" " for _ in text[i:j + 1])
            i = j + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def function_head(head):
    """(name, offset of the parameter list's '(' in `head`) for a head that looks like a
    function definition's, else None."""
    skip = re.match(r"\s*(template\s*<[^{};]*?>\s*(?=[A-Za-z_~]))?", head).end()
    rest = head[skip:]
    if not rest.strip() or CONTROL.match(rest) or "](" in rest.replace(" ", ""):
        return None
    if re.match(r"^(namespace|class|struct|union|enum|extern)\b", rest):
        return None
    m = re.match(r"^(?P<pre>[^()]*?)(?P<name>[~A-Za-z_][\w:~<>]*|operator\s*[^\s(]+)\s*\(", rest)
    if not m or "=" in m.group("pre"):
        return None
    # It must end like a function head: the parameter list, then qualifiers, a trailing
    # return type or a constructor's member initializers (`x_(a)`), not a brace
    # initializer's name.
    if not re.search(r"(\)(\s*(const|noexcept|override|final|mutable|&&?|try))*|->[^;]*)\s*$", rest):
        return None
    return m.group("name"), skip + m.end() - 1


def scan(path, rel):
    text = open(path, encoding="utf-8", errors="replace").read()
    code = blank_code(text)
    results = []
    depth_in_function = 0  # > 0 while inside a measured function
    stack = []             # for each open brace: (is_function, name, start_line)
    head_start = 0         # offset where the current head began
    for i, c in enumerate(code):
        if c in ";":
            head_start = i + 1
        elif c == "{":
            is_function = False
            if depth_in_function == 0:
                found = function_head(code[head_start:i])
                is_function = found is not None
            if is_function:
                name = found[0]
                start_line = code.count("\n", 0, head_start + found[1]) + 1
                depth_in_function += 1
                stack.append((True, name, start_line))
            else:
                if depth_in_function:
                    depth_in_function += 1
                stack.append((False, None, 0))
            head_start = i + 1
        elif c == "}":
            if stack:
                is_function, name, start_line = stack.pop()
                if is_function:
                    depth_in_function = 0
                    end_line = code.count("\n", 0, i) + 1
                    results.append((end_line - start_line + 1, rel, start_line, name))
                elif depth_in_function:
                    depth_in_function -= 1
            head_start = i + 1
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=80)
    parser.add_argument("--all", action="store_true", help="also list the data tables")
    parser.add_argument("--exclude", action="append", default=[],
                        help="skip files whose path contains this text (repeatable)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a function that is not a data table is over the limit (the CTest entry)")
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args()
    paths = args.paths or [os.path.join(ROOT, d) for d in DEFAULT_DIRS]
    found = []
    for top in paths:
        files = [top] if os.path.isfile(top) else [
            os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs if f.endswith(EXTENSIONS)]
        for f in sorted(files):
            rel = os.path.relpath(f, ROOT)
            if any(x in rel for x in args.exclude):
                continue
            found += scan(f, rel)
    long_ones = [r for r in found if r[0] > args.limit]
    long_ones.sort(key=lambda r: (-r[0], r[1]))
    too_long = 0
    for length, rel, line, name in long_ones:
        table = bool(KNOWN_TABLES.search(name.split("::")[-1]))
        too_long += 0 if table else 1
        if table and not args.all:
            continue
        print(f"{length:5d}  {rel}:{line}  {name}{'  (data table)' if table else ''}")
    if args.check and too_long:
        print(f"{too_long} function(s) longer than {args.limit} lines: split them (a data table's name ends in "
              f"_op_entries, _fields or _table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
