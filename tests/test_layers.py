"""The package graph has no cycle: every import (top-level or inside a function) goes down the layers.

Stage recipes are found by the registry through discovery (importlib), not by import statements, so the
lower layers can ask for stage names without depending on the recipes.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tunelab"

# Lowest first; a module may import only from its own layer or lower ones.
LAYERS = [
    {"errors", "console", "hub", "quiet", "signals", "stage_registry", "method_registry"},
    {"config"},
    {"data", "metrics"},
    {"models"},
    {"runs", "plots", "callbacks"},
    {"training", "inference", "evaluation", "export"},
    {"rewards"},
    {"stages", "serve"},
    {"commands", "demo", "webui"},
    {"cli", "__main__", "__init__"},
]
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """The first name under tunelab: a subpackage or a top-level module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> list[tuple[str, str]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("tunelab", *path.relative_to(PACKAGE).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunelab"):
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("tunelab")]
            else:
                continue
            found += [(module, target) for target in targets]
    return found


def test_every_unit_has_a_layer():
    units = {_unit(".".join(("tunelab", *p.relative_to(PACKAGE).with_suffix("").parts)))
             for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYER_OF), sorted(units - set(LAYER_OF))


def test_imports_only_go_down_the_layers():
    upward = [f"{source} imports {target}" for source, target in _imports()
              if target != "tunelab" and LAYER_OF[_unit(target)] > LAYER_OF[_unit(source)]]
    assert not upward, "\n".join(upward)


def test_no_stage_imports_another():
    """Shared stage pieces live below the stages (training/preference.py, rewards/online_rl.py); a stage that runs
    another's recipe finds it by name in the registry."""
    crossing = [f"{source} imports {target}" for source, target in _imports()
                if source.startswith("tunelab.stages.") and target.startswith("tunelab.stages.")]
    assert not crossing, "\n".join(crossing)


# What validating a config may import of tunelab: the config, the registries, the stage modules (discovery) and the
# light modules that declare the stages' keys. Nothing that reads data, builds models or trains.
VALIDATION_MAY_IMPORT = (
    "tunelab", "tunelab.config", "tunelab.errors", "tunelab.stage_registry", "tunelab.method_registry",
    "tunelab.stages", "tunelab.training", "tunelab.training.preference", "tunelab.training.generation_keys",
    "tunelab.rewards", "tunelab.rewards.online_rl", "tunelab.rewards.settings", "tunelab.rewards.registry",
    "tunelab.rewards.calling", "tunelab.rewards.text", "tunelab.data", "tunelab.data.completions",
    "tunelab.metrics", "tunelab.metrics.text",
)


def test_validating_a_config_loads_no_training_code():
    """Reading and validating every example config imports every stage module (discovery), and none of them
    may bring in numpy, torch, the training libraries, the data pipeline or the run lifecycle: validation
    answers at once. Measured as sys.modules before and after, in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys, pathlib, json\n"
        "before = set(sys.modules)\n"
        "from tunelab.config import load_config\n"
        "for path in sorted(pathlib.Path('examples').glob('*.yaml')):\n"
        "    load_config(path)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parents[1], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    loaded = json.loads(result.stdout)
    heavy = ("numpy", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "pyarrow")
    assert not [name for name in loaded if name.split(".")[0] in heavy]
    ours = [name for name in loaded if name.split(".")[0] == "tunelab"]
    assert "tunelab.stages.grpo" in ours and "tunelab.config.train" in ours  # it did validate the stages' keys
    outside = [name for name in ours if not (name in VALIDATION_MAY_IMPORT or name.startswith(
        ("tunelab.config.", "tunelab.stages.")))]
    assert not outside, outside
