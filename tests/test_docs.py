"""The user documentation stays true to the code: every stage in the README, no paths outside the repo."""

from __future__ import annotations

from pathlib import Path

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
