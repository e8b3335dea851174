#!/usr/bin/env python3
"""The `iptables-restore` and `iptables -D` that kube-router's NetworkPolicy controller
runs in localkube.

kube-router v2.1.0 (the only version the Go module proxy serves) changes the filter
table in two ways that undo what other programs on the machine do meanwhile (Docker,
the CNI firewall plugin):

- It syncs by saving the whole table, rebuilding its own chains in that copy, and
  restoring the whole table: whatever another program changed in between is undone.
  Docker's rules for a network it had just created were lost that way (its containers
  could not reach each other) and rules of networks it had removed came back. Its own
  fix, a --noflush restore, is an open feature request (cloudnativelabs/kube-router#1372).
- It keeps its jump first in INPUT, FORWARD and OUTPUT: when another program has put a
  rule above it (Docker moves its own jumps to the top of FORWARD at each network it
  creates), it inserts the jump at the top again and deletes the old copy by its
  position, computed from a listing taken before. If the chain changed in between, that
  position is another program's rule: Docker's jump to DOCKER-USER went, and copies of
  the controller's jump piled up.

localkube starts the controller with a directory first in its PATH whose
`iptables-restore` is this program, and whose `iptables` sends a delete by position
here (`iptables-shim`, a shell script) and everything else to the real command.

- restore: given the controller's whole table, it restores in one --noflush transaction
  only what the controller owns: its chains (KUBE-ROUTER-*, KUBE-POD-FW-*, KUBE-NWPLCY-*)
  as the controller wrote them, the deletion of its chains that the table no longer
  holds, and the deletion of the jumps to them in other chains that the controller
  dropped. Every other chain and rule stays as it is at that moment.
- delete by position: whatever the position, it deletes, by their nftables handles,
  the copies of each of the controller's jumps in that chain but the first (the one the
  controller has just inserted at the top). Nothing else in the chain is touched.

Any other use (another table, other options) goes to the real command as is.
LOCALKUBE_IPTABLES_DIR names the directory of the real iptables, iptables-save and
iptables-restore; without it this program refuses to run.
"""

from __future__ import annotations

import os
import subprocess
import sys

OWNED = ("KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-")


def owned(chain: str) -> bool:
    return chain.startswith(OWNED)


def parse(table: str) -> tuple[list[str], dict[str, list[str]]]:
    """(chains in order of first mention, {chain: its rule commands in order}) of one table's
    restore text (iptables-save's, or the controller's, which also inserts with -I)."""
    chains: list[str] = []
    rules: dict[str, list[str]] = {}
    for line in table.splitlines():
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name not in rules:
                chains.append(name)
                rules[name] = []
        elif line.startswith("-") and len(line.split()) > 1:
            # -A, and the -I CHAIN 1 ... the controller writes too: kept in order
            name = line.split()[1]
            if name not in rules:
                chains.append(name)
                rules[name] = []
            rules[name].append(line)
    return chains, rules


def references_owned(rule: str) -> bool:
    return any(owned(word) for word in rule.split()[2:])


def owned_restore(desired: str, current: str) -> str:
    """The --noflush restore input that makes the controller's part of `current` what
    `desired` (the controller's whole table) says, and leaves the rest of `current` alone."""
    want_chains, want_rules = parse(desired)
    have_chains, have_rules = parse(current)
    keep = [c for c in want_chains if owned(c)]
    stale = [c for c in have_chains if owned(c) and c not in want_rules]
    lines = ["*filter"]
    # A chain line of an existing chain flushes it under --noflush; a new one is created.
    lines += [f":{c} - [0:0]" for c in keep + stale]
    for chain in have_chains:
        if owned(chain):
            continue
        wanted = set(want_rules.get(chain, []))
        # Jumps to the controller's chains that it took out of other chains (its cleanup);
        # a rule another program added since the controller's save is not in `desired`
        # either, but it does not name the controller's chains.
        for rule in have_rules[chain]:
            if rule.startswith("-A ") and references_owned(rule) and rule not in wanted:
                lines.append("-D" + rule[2:])
    # the controller's commands for its chains, in its order
    lines += [
        line
        for line in desired.splitlines()
        if line.startswith("-") and len(line.split()) > 1 and owned(line.split()[1])
    ]
    lines += [f"-X {c}" for c in stale]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def duplicate_jumps(listing: str) -> list[str]:
    """The handles of the controller's jumps in an `nft -a list chain` listing that
    repeat an earlier jump to the same chain: all its copies but the first."""
    seen: set[str] = set()
    handles = []
    for line in listing.splitlines():
        words = line.split()
        if "jump" not in words or "handle" not in words:
            continue
        target = words[words.index("jump") + 1]
        if not owned(target):
            continue
        if target in seen:
            handles.append(words[words.index("handle") + 1])
        seen.add(target)
    return handles


def delete_duplicate_jumps(family: str, real_dir: str, table: str, chain: str) -> int:
    nft_family = "ip6" if family == "ip6tables" else "ip"
    version = subprocess.run(
        [os.path.join(real_dir, family), "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    if "nf_tables" not in version:
        sys.stderr.write(
            f"{family}: not the nf_tables backend ({version.strip()}): "
            "no rule handles, so the controller deletes by position as it would\n"
        )
        return -1
    listing = subprocess.run(
        ["nft", "-a", "list", "chain", nft_family, table, chain],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if listing.returncode != 0:
        sys.stderr.write(listing.stderr)
        return listing.returncode
    for handle in duplicate_jumps(listing.stdout):
        # a handle gone meanwhile (another delete of the same copy) is not an error
        subprocess.run(
            ["nft", "delete", "rule", nft_family, table, chain, "handle", handle],
            capture_output=True,
            timeout=30,
        )
    return 0


def main(argv: list[str]) -> int:
    name = os.path.basename(argv[0])
    args = argv[1:]
    if name == "iptables-shim":  # iptables-shim FAMILY ARGS...: a delete by position
        name, args = args[0], args[1:]
    family = "ip6tables" if name.startswith("ip6") else "iptables"
    real_dir = os.environ.get("LOCALKUBE_IPTABLES_DIR")
    if not real_dir:
        sys.stderr.write(
            f"{name}: LOCALKUBE_IPTABLES_DIR (the real {family} commands' directory) is not set\n"
        )
        return 2
    if not name.endswith("-restore"):
        real = os.path.join(real_dir, family)
        position = delete_by_position(args)
        if position is not None:
            done = delete_duplicate_jumps(family, real_dir, *position)
            if done >= 0:
                return done
        os.execv(real, [real, *args])
    restore = os.path.join(real_dir, f"{family}-restore")
    save = os.path.join(real_dir, f"{family}-save")
    flags = [a for a in args if a in ("-w", "--wait")]
    if [a for a in args if a not in flags] != ["-T", "filter"]:
        os.execv(restore, [restore, *args])
    desired = sys.stdin.read()
    saved = subprocess.run([save, "-t", "filter"], capture_output=True, text=True, timeout=60)
    if saved.returncode != 0:
        sys.stderr.write(f"{save} -t filter: exit code {saved.returncode}: {saved.stderr}")
        return saved.returncode
    done = subprocess.run(
        [restore, "--noflush", *flags, "-T", "filter"],
        input=owned_restore(desired, saved.stdout),
        capture_output=True,
        text=True,
        timeout=60,
    )
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


BUILTIN = ("INPUT", "FORWARD", "OUTPUT")


def delete_by_position(args: list[str]) -> tuple[str, str] | None:
    """(table, chain) of `-t TABLE -D CHAIN N [--wait [S]]` on a builtin chain, else None."""
    rest = [a for a in args if a not in ("-w", "--wait") and not a.isdigit()]
    numbers = [a for a in args if a.isdigit()]
    table = "filter"
    if "-t" in rest:
        table = rest[rest.index("-t") + 1]
        rest.remove("-t")
        rest.remove(table)
    if len(rest) == 2 and rest[0] == "-D" and rest[1] in BUILTIN and numbers:
        return table, rest[1]
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv))
