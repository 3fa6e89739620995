"""`tunelab export` as a command: its flags and YAML into checked export settings (no torch imported)."""

from __future__ import annotations

from typing import Any

from tunelab.errors import TunelabError
from tunelab.export.settings import ExportSettings, load_export_settings


def export_settings(config: str | None, export_format: str | None, quantization: str | None,
                    flags: dict[str, Any]) -> ExportSettings:
    """``--quantization`` means bitsandbytes bits (4, 8) for an hf export and a GGUF type otherwise; a GGUF type
    without ``--format`` implies gguf."""
    flags = {**flags, "export_format": export_format}
    if quantization is not None:
        gguf_format = export_format == "gguf" or (export_format is None and quantization not in ("4", "8"))
        if gguf_format:
            flags.update(export_gguf_type=quantization, export_format="gguf")
        elif quantization in ("4", "8"):
            flags["export_quantization_bit"] = int(quantization)
        else:
            raise TunelabError(f"--quantization {quantization} with --format hf: an hf export quantizes to 4 or 8 bits "
                               "(bitsandbytes); GGUF types (q8_0, ...) need --format gguf")
    return load_export_settings(config, flags)
