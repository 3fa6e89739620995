"""The user documentation stays true to the code: every stage in the README, no paths outside the repo, and
every code block a user is shown (README, written model cards) compiles and, where it can offline, runs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.stage_registry import all_stages

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_lists_every_stage_with_its_keys_and_an_example_that_exists():
    rows = {line.split("|")[1].strip(): line for line in README.splitlines() if line.startswith("| `stage: ")}
    assert set(rows) == {f"`stage: {name}`" for name in all_stages()}
    for name, stage in all_stages().items():
        row = rows[f"`stage: {name}`"]
        for key in stage.keys.model_fields:
            assert f"`{key}`" in row or "same as dpo" in row, (name, key)
        examples = [part.strip("` ") for part in row.split("|")[-2].split(",")]
        assert all((REPO / "examples" / example).is_file() for example in examples), examples


def test_user_docs_point_only_inside_the_repository():
    docs = [REPO / "README.md", REPO / "examples" / "data" / "README.md", *sorted((REPO / "examples").rglob("*.yaml"))]
    for path in docs:
        assert "../shared" not in path.read_text(encoding="utf-8"), path


# --- every code block the user is shown: the README's and the written model cards' ---------------------

def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def shell_commands(block: str) -> list[str]:
    """One command per line (backslash continuations joined, comments dropped, `a && b` split)."""
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        line_commands: list[list[str]] = [[]]
        for word in words:
            line_commands.append([]) if word == "&&" else line_commands[-1].append(word)
        commands += [shlex.join(command) for command in line_commands if command]
    return commands


def test_readme_python_blocks_compile():
    blocks = fenced_blocks(README, "python")
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")


# README commands that this test does not run, and why; every other `tunelab` command runs as written (a
# `tunelab train` as its --dry-run, which runs every check of the run and writes nothing).
NOT_RUN = {
    "qwen2.5_7b": "a GPU recipe on a hub model",
    "llama3.1_8b": "a GPU recipe on a hub model",
    "tunelab serve": "a server runs until stopped; tests/test_serve.py runs it in-process with real clients",
}


def _readme_commands() -> list[str]:
    return [command for block in fenced_blocks(README, "bash") for command in shell_commands(block)]


@pytest.fixture
def readme_folder(tmp_path, monkeypatch, demo_adapter, rm_adapter) -> Path:
    """A folder as a user's clone is after `make demo` and `tunelab train examples/stories_rm.yaml`."""
    for name in ("examples", "tests"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "outputs").mkdir()
    shutil.copytree(demo_adapter, tmp_path / "outputs" / "demo", ignore=shutil.ignore_patterns("checkpoint-*"))
    shutil.copytree(rm_adapter, tmp_path / "outputs" / "stories_rm", ignore=shutil.ignore_patterns("checkpoint-*"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_readme_commands_run_as_written(readme_folder):
    from typer.testing import CliRunner

    from tunelab.cli import app

    ran = []
    for command in _readme_commands():
        args = shlex.split(command)
        if args[0] == "python" and args[1].startswith("examples/"):  # a helper the commands after it need
            done = subprocess.run([sys.executable, *args[1:]], capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
            continue
        if args[0] != "tunelab" or any(marker in command for marker in NOT_RUN):
            continue  # make, pip, accelerate and torchrun run tunelab's own commands, which are run here
        if args[1] == "train":
            args.append("--dry-run")
        result = CliRunner().invoke(app, args[1:])
        assert result.exit_code == 0, f"{command}\n{result.output[-3000:]}"
        ran.append(command)
    assert len(ran) >= 20 and any("--predictions outputs/preds.jsonl" in command for command in ran)
    assert (readme_folder / "outputs" / "hh.jsonl").is_file()


def _card_blocks(folder: Path) -> tuple[list[str], list[str]]:
    card = (folder / "README.md").read_text(encoding="utf-8")
    return fenced_blocks(card, "bash"), fenced_blocks(card, "python")


@pytest.mark.parametrize("kind", ["sft adapter", "reward adapter", "merged export", "reward export"])
def test_model_card_code_compiles_and_runs(kind, demo_adapter, rm_adapter, tmp_path, monkeypatch):
    """Each Python block of a written card runs offline as it stands; its commands run as printed."""
    from typer.testing import CliRunner

    from tunelab.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = {"sft adapter": demo_adapter, "reward adapter": rm_adapter}.get(kind)
    if folder is None:
        source = rm_adapter if kind == "reward export" else demo_adapter
        folder = tmp_path / "exported"
        result = CliRunner().invoke(app, ["export", "--adapter", str(source), "--output", str(folder)])
        assert result.exit_code == 0, result.output
    shell, python = _card_blocks(folder)
    assert shell and python, kind
    for block in python:
        compile(block, "README.md", "exec")
        run = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=tmp_path,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert run.returncode == 0, f"{kind}:\n{block}\n{run.stderr[-3000:]}"
    monkeypatch.chdir(REPO)  # a training card's command is run from where training ran
    for command in (c for block in shell for c in shell_commands(block)):
        args = shlex.split(command)
        assert args[0] == "tunelab", command
        result = CliRunner().invoke(app, args[1:], input="")  # `tunelab chat` ends at the end of its input
        assert result.exit_code == 0, f"{command}\n{result.output[-3000:]}"


# --- docs/architecture.md: the picture and the "how to add" checklists name what exists -------------------

ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
PACKAGE = REPO / "src" / "tunelab"


def _defined_names(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    names |= {target.id for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
              for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
              if isinstance(target, ast.Name)}
    return names


def test_architecture_checklists_name_files_and_symbols_that_exist():
    """Every `path.py` and `path.py:Symbol` the architecture page names is in the package (or the tests), so a
    rename that leaves the checklists stale fails here."""
    checked = 0
    for path, symbol in re.findall(r"`((?:[\w]+/)*[\w]+\.py)(?::(\w+))?`", ARCHITECTURE):
        candidates = [PACKAGE / path, REPO / path, REPO / "src" / path]
        found = next((c for c in candidates if c.is_file()), None)
        assert found is not None, path
        if symbol:
            assert symbol in _defined_names(found), f"{path}:{symbol}"
        checked += 1
    assert checked > 30
    for section in ("## Adding a stage", "## Adding a fine-tuning method", "## Adding a row kind",
                    "## Adding an inference engine", "## One run, from YAML to saved adapter"):
        assert section in ARCHITECTURE


def test_the_layer_picture_names_every_package_unit():
    """Every subpackage and top-level module of tunelab appears in the layer picture."""
    picture = ARCHITECTURE.split("```")[1]
    units = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").is_file()}
    units |= {path.name for path in PACKAGE.glob("*.py") if path.name not in ("__init__.py", "__main__.py")}
    missing = [unit for unit in sorted(units) if unit + ("/" if not unit.endswith(".py") else "") not in picture]
    assert not missing, missing
