"""`tunelab train`: the config read and checked, then the stage's recipe (or the dry run)."""

from __future__ import annotations

from tunelab.config import load_config
from tunelab.errors import ConfigError


def train_command(config: str, overrides: list[str], dry_run: bool, command: str) -> bool:
    """Runs the stage named by the config; returns whether the run was interrupted (SIGTERM, Ctrl-C)."""
    cfg = load_config(config, overrides)
    if not cfg.do_train:
        raise ConfigError("do_train is false: `tunelab train` only trains; use `tunelab predict` to generate")
    if dry_run:
        from tunelab.training.dry_run import dry_run as check

        check(cfg)
        return False
    from tunelab.stage_registry import all_stages
    from tunelab.training.lifecycle import end_distributed

    try:
        result = all_stages()[cfg.stage].run()(cfg, command=command)
    finally:
        end_distributed()
    return bool(result.interrupted)
