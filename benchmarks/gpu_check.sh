#!/usr/bin/env bash
# The GPU checks of the performance issue, in one call of a lent machine (each step has a limit; 9 minutes at most):
#
#   bash benchmarks/gpu_site.sh    # here, once: the packages the machine lacks, into .gpu_site/
#   device run: carry [".gpu_site"], timeout_s 600, command "bash benchmarks/gpu_check.sh"
#
# Writes to $OUT (the device tool brings it back; /tmp/gpu-check elsewhere):
#   env.txt         the machine, the packages, what the GPU supports (bf16, flash-attn, Liger, bitsandbytes)
#   pytest.log      tests/test_gpu.py, and QLoRA training (tests/test_methods.py) on the GPU
#   sft_lora.txt    benchmarks/sft_throughput.py, tunelab vs plain TRL, a 0.45B Llama-shaped model with the real
#   sft_full.txt      128k Llama-3 vocabulary, bf16, LoRA r8 on all linear layers / full fine-tuning
#   dpo_lora.txt    benchmarks/dpo_throughput.py, the same model, LoRA, bf16
# Each step runs even when one before it failed; the last lines of each say how it ended.
#
# To check the script itself on a machine without a GPU (a small model, minutes):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_HIDDEN=64 GPU_CHECK_LAYERS=2 GPU_CHECK_STEPS=6 GPU_CHECK_BATCH=2 \
#       GPU_CHECK_SITE= TUNELAB_TEST_DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE-$PWD/.gpu_site}
export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg

step() {  # step NAME SECONDS COMMAND...: the command's output in $OUT/NAME, ended by its exit status and time
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    echo "== $name: $*" | tee "$OUT/$name"
    timeout "$limit" "$@" >>"$OUT/$name" 2>&1
    echo "== $name: exit $? after $((SECONDS - started)) s" | tee -a "$OUT/$name"
}

step env.txt 60 "$PYTHON" - <<'EOF'
import importlib, importlib.metadata as metadata, platform, shutil, subprocess
import torch
print(platform.platform(), "python", platform.python_version())
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())
for name in ("transformers", "trl", "peft", "accelerate", "datasets", "pydantic", "tokenizers", "bitsandbytes",
             "liger-kernel", "flash-attn", "vllm", "pyarrow"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} missing")
for module in ("trl", "datasets", "pydantic", "peft", "bitsandbytes", "liger_kernel", "flash_attn"):
    try:  # an import error shows here, not halfway through a benchmark
        print(module, "imports from", importlib.import_module(module).__file__)
    except Exception as error:
        print(module, "does not import:", type(error).__name__, error)
EOF

# the CPU suite's own tests compare CPU tensors with the model's outputs, so only QLoRA's joins the GPU tests
step pytest.log 150 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    tests/test_methods.py::test_qlora_trains_with_periodic_evaluation_on_this_cpu

LLAMA3=$(mktemp -d)/llama3  # the fixture ships xz-compressed
"$PYTHON" -c "import lzma, pathlib, shutil, sys; source, target = map(pathlib.Path, sys.argv[1:]); \
shutil.copytree(source, target, ignore=shutil.ignore_patterns('*.xz')); \
(target / 'tokenizer.json').write_bytes(lzma.decompress((source / 'tokenizer.json.xz').read_bytes()))" \
    tests/fixtures/tokenizers/llama3 "$LLAMA3"
MODEL=(--tokenizer "$LLAMA3" --arch llama --hidden-size "${GPU_CHECK_HIDDEN:-896}"
       --layers "${GPU_CHECK_LAYERS:-24}" --device "${GPU_CHECK_DEVICE:-cuda}" --bf16)
DATA=tests/fixtures/data/llamafactory/alpaca_en_demo.json
STEPS=${GPU_CHECK_STEPS:-30}
RUN=(--repeats 1 --warmup $((STEPS / 6)) --batch-size "${GPU_CHECK_BATCH:-8}")
step sft_lora.txt 110 "$PYTHON" benchmarks/sft_throughput.py "${MODEL[@]}" "${RUN[@]}" --data "$DATA" --rows 400 \
    --steps "$STEPS" --cutoff 1024
step sft_full.txt 100 "$PYTHON" benchmarks/sft_throughput.py "${MODEL[@]}" "${RUN[@]}" --data "$DATA" --rows 400 \
    --steps $((STEPS * 2 / 3)) --cutoff 1024 --full
step dpo_lora.txt 90 "$PYTHON" benchmarks/dpo_throughput.py "${MODEL[@]}" "${RUN[@]}" --rows 200 \
    --steps $((STEPS * 2 / 3))
ls -la "$OUT"
