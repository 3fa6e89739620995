#!/usr/bin/env bash
# The Python packages tunelab needs that a lent GPU machine lacks, unpacked into .gpu_site/ for the device tool to
# carry (git ignores the folder). Run here, where the package registry is reachable; the machine reaches nothing.
#
#   bash benchmarks/gpu_site.sh          # then: device run, carry [".gpu_site"], command "bash benchmarks/gpu_check.sh"
#
# The machine's image has Python 3.12, torch (CUDA 13), transformers, accelerate, pyarrow and the rest of the
# Hugging Face stack except these. The same versions as this checkout's .venv where it has them. bitsandbytes keeps
# only its CUDA 13 and CPU libraries: the whole wheel would not fit the 64 MiB the tool carries.
set -euo pipefail
cd "$(dirname "$0")/.."

version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
packages=(trl datasets dill multiprocess pydantic pydantic-core annotated-types typing-inspection peft
          bitsandbytes liger-kernel)
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
for name in "${packages[@]}"; do
    pinned=$(version "$name")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$wheels" "$name${pinned:+==$pinned}" 2>&1 \
        | grep -v "^WARNING: Location" || true
done
rm -rf .gpu_site
mkdir -p .gpu_site
for wheel in "$wheels"/*.whl; do
    python3 -m zipfile -e "$wheel" .gpu_site
done
find .gpu_site/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda13*' ! -name '*cpu*' -delete
du -sh .gpu_site
ls "$wheels"
