"""An Ollama ``Modelfile`` beside a GGUF file: the chat format as Ollama's Go template, and the stop tokens.

Ollama does not run Jinja chat templates, so the two formats most fine-tunes use are written out as Go
templates: ChatML (Qwen) and Llama-3's header format. For any other template the Modelfile names the GGUF file
and its stop tokens only, and Ollama falls back to the chat template stored in the file.
"""

from __future__ import annotations

from pathlib import Path

CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""
LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

"""


def ollama_template(chat_template: str | None) -> tuple[str | None, list[str]]:
    """(Go template, stop tokens) for a known Jinja chat template, else (None, [])."""
    template = chat_template or ""
    if "<|im_start|>" in template:
        return CHATML, ["<|im_start|>", "<|im_end|>"]
    if "<|start_header_id|>" in template:
        return LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    return None, []


def write_modelfile(folder: Path, gguf_name: str, chat_template: str | None, eos_token: str | None) -> Path:
    template, stops = ollama_template(chat_template)
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    lines = [f"FROM ./{gguf_name}"]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# the chat template stored in the GGUF file applies (no Go template for it here)")
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
