"""The CI decision to rebuild the image (tools/ci/image_release.py) and the workflow's lint."""

import importlib.util
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("image_release", REPO / "tools/ci/image_release.py")
image_release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(image_release)


@pytest.mark.parametrize(
    ("changed", "message", "build", "reason"),
    [
        (["src/minimaldask/image/recipe.py"], "Trim bokeh", True, "recipe changed: src/minimaldask/image/recipe.py"),
        (["src/minimaldask/entrypoint.py", "README.md"], "x", True, "src/minimaldask/entrypoint.py"),
        (["Dockerfile"], "x", True, "Dockerfile"),
        (["README.md", "src/minimaldask/cluster.py"], "Docs", False, "did not change"),
        (["README.md"], "Docs; rebuild for the new dask", True, "asks to rebuild"),
        (["README.md"], "REBUILD", True, "asks to rebuild"),
        (["README.md"], "rebuilding docs", False, "did not change"),
        (None, "first push", True, "no previous commit"),
        ([], "empty", False, "did not change"),
    ],
)  # fmt: skip
def test_decide(changed, message, build, reason):
    got_build, got_reason = image_release.decide(changed, message)
    assert got_build is build
    assert reason in got_reason


def test_many_recipe_files_are_summarised():
    changed = [f"src/minimaldask/image/m{i}.py" for i in range(5)]
    assert image_release.decide(changed, "x")[1].endswith("and 2 more")


def test_script_against_this_repository(capsys):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    image_release.main(["--base", "0" * 40, "--head", head.stdout.strip()])
    out = capsys.readouterr().out.splitlines()
    assert out[0] in ("build=true", "build=false")
    assert out[1].startswith("reason=")


@pytest.mark.slow
def test_workflow_passes_actionlint():
    result = subprocess.run(
        ["bash", str(REPO / "tools/ci/actionlint.sh"), str(REPO / ".github/workflows/image.yml")],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
