#!/usr/bin/env python3
"""Decide whether CI builds and pushes the image: print ``build=...`` and ``reason=...``.

The image is rebuilt when its recipe changed between two commits (the files
under RECIPE), or when the head commit's message contains the word
"rebuild"; otherwise nothing is built. The output lines go to
``$GITHUB_OUTPUT``.

    python tools/ci/image_release.py --base BEFORE_SHA --head SHA
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

# What decides the image's content. The rest of the package (the client side:
# cluster, manifests, CLI) runs where the user runs it, not in the image.
RECIPE = (
    "src/minimaldask/image/",
    "src/minimaldask/entrypoint.py",
    "src/minimaldask/janitor.py",
    "src/minimaldask/config.py",
    "src/minimaldask/exceptions.py",
    "src/minimaldask/minimaldask.yaml",
    "pyproject.toml",
    "Dockerfile",
    ".github/workflows/image.yml",
    "tools/ci/build-image.sh",
    "tools/ci/cpython.json",
)
NO_COMMIT = re.compile(r"^0*$")


def decide(changed: list[str] | None, message: str) -> tuple[bool, str]:
    """``(build?, reason)`` from the changed paths (None: unknown) and the head message."""
    if re.search(r"\brebuild\b", message, re.IGNORECASE):
        return True, "the head commit message asks to rebuild"
    if changed is None:
        return True, "no previous commit to compare with"
    recipe = sorted(p for p in changed if p.startswith(RECIPE))
    if recipe:
        more = f" and {len(recipe) - 3} more" if len(recipe) > 3 else ""
        return True, f"the image recipe changed: {', '.join(recipe[:3])}{more}"
    return False, "the image recipe did not change"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="", help="the commit before the push")
    parser.add_argument("--head", default="HEAD", help="the pushed commit")
    args = parser.parse_args(argv)
    message = _git("log", "-1", "--format=%B", args.head)
    changed: list[str] | None = None
    if args.base and not NO_COMMIT.match(args.base):
        try:
            changed = _git("diff", "--name-only", args.base, args.head).split()
        except subprocess.CalledProcessError:
            changed = None  # the base is not in this clone (a force push, a shallow clone)
    build, reason = decide(changed, message)
    print(f"build={'true' if build else 'false'}")
    print(f"reason={reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
