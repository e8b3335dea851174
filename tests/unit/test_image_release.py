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
        (["tools/ci/cpython.json"], "Pin CPython 3.12.7", True, "tools/ci/cpython.json"),
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


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@invalid", *args],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository of two commits: the first adds README.md, the second the recipe."""
    git(tmp_path, "init", "-q")
    (tmp_path / "README.md").write_text("x\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "First commit")
    (tmp_path / "src/minimaldask/image").mkdir(parents=True)
    (tmp_path / "src/minimaldask/image/recipe.py").write_text("PYTHONS = {}\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "Add the recipe")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_script(capsys, *args):
    assert image_release.main(list(args)) == 0
    return capsys.readouterr().out.splitlines()


def test_script_with_a_base_of_zeros_builds(repo, capsys):
    # GitHub sends 40 zeros as the "before" of a branch's first push.
    assert run_script(capsys, "--base", "0" * 40, "--head", "HEAD") == [
        "build=true",
        "reason=no previous commit to compare with",
    ]


def test_script_sees_the_recipe_change_between_two_commits(repo, capsys):
    assert run_script(capsys, "--base", "HEAD~1", "--head", "HEAD") == [
        "build=true",
        "reason=the image recipe changed: src/minimaldask/image/recipe.py",
    ]


def test_script_builds_nothing_when_only_docs_changed(repo, capsys):
    (repo / "README.md").write_text("y\n")
    git(repo, "commit", "-q", "-am", "Docs")
    assert run_script(capsys, "--base", "HEAD~1", "--head", "HEAD") == [
        "build=false",
        "reason=the image recipe did not change",
    ]


def test_script_with_a_base_missing_from_the_clone_builds(repo, capsys):
    assert run_script(capsys, "--base", "1" * 40, "--head", "HEAD") == [
        "build=true",
        "reason=no previous commit to compare with",
    ]


@pytest.mark.slow
def test_workflow_passes_actionlint():
    result = subprocess.run(
        ["bash", str(REPO / "tools/ci/actionlint.sh"), str(REPO / ".github/workflows/image.yml")],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
