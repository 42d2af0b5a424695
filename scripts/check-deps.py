#!/usr/bin/env python3
"""The licence, ban and source rules of deny.toml, checked against the
resolved dependency graph (cargo metadata) in seconds, so that `make test`
enforces them on every run. `make deny` runs cargo-deny itself with the
same file (it needs several minutes to build, and its advisory database
comes from GitHub)."""
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def allowed(expr: str, allow: set) -> bool:
    """Does the SPDX expression `expr` permit use under the `allow` list?
    OR needs one side allowed, AND both; `A WITH B` is one licence; the old
    `A/B` spelling means OR."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expr.replace("/", " OR "))
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom():
        if peek() == "(":
            take()
            v = disjunction()
            if take() != ")":
                raise ValueError(expr)
            return v
        name = take()
        if peek() == "WITH":
            take()
            name = f"{name} WITH {take()}"
        return name in allow

    def conjunction():
        v = atom()
        while peek() == "AND":
            take()
            v = atom() and v
        return v

    def disjunction():
        v = conjunction()
        while peek() == "OR":
            take()
            v = conjunction() or v
        return v

    result = disjunction()
    if peek() is not None:
        raise ValueError(expr)
    return result


def main() -> int:
    policy = tomllib.loads((ROOT / "deny.toml").read_text())
    allow = set(policy["licenses"]["allow"])
    banned = {b["crate"] for b in policy["bans"].get("deny", [])}
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    )
    in_graph = {n["id"] for n in meta["resolve"]["nodes"]}
    problems = []
    for p in meta["packages"]:
        if p["id"] not in in_graph:
            continue
        name = f"{p['name']} {p['version']}"
        if p["source"] is not None and p["source"] != CRATES_IO:
            problems.append(f"{name}: comes from {p['source']}, not crates.io")
        if p["name"] in banned:
            problems.append(f"{name}: banned by deny.toml [bans]")
        lic = p.get("license")
        if p["source"] is None:
            continue  # this workspace's own crates
        if not lic:
            problems.append(f"{name}: no licence expression")
        else:
            try:
                if not allowed(lic, allow):
                    problems.append(f"{name}: licence {lic!r} is not allowed by deny.toml")
            except (ValueError, IndexError):
                problems.append(f"{name}: cannot read the licence {lic!r}")
    for line in problems:
        print(f"check-deps: {line}", file=sys.stderr)
    count = len(in_graph)
    if problems:
        print(f"check-deps: {len(problems)} problem(s) in {count} crates", file=sys.stderr)
        return 1
    print(f"check-deps: {count} crates: licences, bans and sources as deny.toml allows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
