#!/usr/bin/env python3
"""Fetch the pinned standalone CPython archive of a Python and platform, checked by its sha256.

The pins (URL template, release, versions and digests) are in tools/ci/cpython.json,
or the file that $CPYTHON_PINS names. A digest that is not 64 hex digits is
refused before anything is downloaded; an archive whose digest differs is deleted and refused.

    python tools/ci/cpython.py --python 3.12 --platform linux/amd64 --dest DIR   # prints the path
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import urllib.request
from pathlib import Path

PINS = Path(__file__).with_name("cpython.json")


class PinError(Exception):
    """The pins cannot give a checked archive; the message says what to fix."""


def pin(pins: dict, python: str, platform: str) -> tuple[str, str]:
    """The URL and sha256 of one archive, or PinError."""
    entry = pins["pythons"].get(python)
    if entry is None:
        raise PinError(
            f"no standalone CPython pinned for Python {python} (have {', '.join(pins['pythons'])})"
        )
    if platform not in pins["triples"] or platform not in entry["sha256"]:
        raise PinError(f"no standalone CPython {python} pinned for {platform}")
    digest = entry["sha256"][platform]
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise PinError(
            f"the sha256 of CPython {entry['version']} for {platform} is {digest!r}, not a digest:"
            " copy it from the SHA256SUMS file of the release into tools/ci/cpython.json"
        )
    url = pins["url"].format(
        release=pins["release"], version=entry["version"], triple=pins["triples"][platform]
    )
    return url, digest


def fetch(url: str, digest: str, dest: Path) -> Path:
    """Download ``url`` into ``dest`` (kept when its digest already matches); check the digest."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / url.rsplit("/", 1)[-1]
    if path.exists() and _sha256(path) == digest:
        return path
    tmp = path.with_name(path.name + ".partial")
    with urllib.request.urlopen(url, timeout=300) as response, open(tmp, "wb") as out:
        while block := response.read(1 << 20):
            out.write(block)
    got = _sha256(tmp)
    if got != digest:
        tmp.unlink()
        raise PinError(f"{url}: sha256 {got}, but {digest} is pinned: refused")
    os.replace(tmp, path)
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True)
    parser.add_argument("--platform", required=True)
    parser.add_argument("--dest", required=True, type=Path)
    args = parser.parse_args(argv)
    pins = json.loads(Path(os.environ.get("CPYTHON_PINS") or PINS).read_text())
    try:
        url, digest = pin(pins, args.python, args.platform)
        print(fetch(url, digest, args.dest))
    except PinError as e:
        print(f"cpython.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
