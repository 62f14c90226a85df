#!/usr/bin/env bash
# The one prepared run for a session that is lent a GPU machine (issue 8): the CUDA tests, then the
# benchmarks against diffusers on the GPU, each writing JSON into $OUT.
#
#   bench/gpu.sh fetch   here: download the pure-Python packages the GPU machine lacks into .whl/
#                        (it has torch, typer, rich, einops, safetensors, scikit-image, pytest; nothing
#                        can be fetched there)
#   bench/gpu.sh run     there, through the device tool with carry [".whl"]: install them into
#                        /tmp/site, run tests/test_cuda.py and the benchmarks, logs and JSON into $OUT
set -u
cd "$(dirname "$0")/.."
WHEELS=(webdataset==1.0.2 braceexpand==0.1.7 lpips==0.1.4 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
        torch-fidelity==0.4.0 diffusers==0.42.1 importlib_metadata==10.2.0 pytorch-fid==0.3.0)

case "${1:-}" in
fetch)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    du -sh .whl
    ;;
run)
    OUT=${OUT:?set OUT to the folder for results}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PWD:$PWD/bench:/tmp/site" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
    python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' >> "$OUT/gpu.csv" 2>&1
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/tests.log" 2>&1
    echo "tests: exit $?" >> "$OUT/tests.log"
    timeout 200 python3 bench/unet_train.py --device cuda --batch 256 --steps 10 --repeats 3 \
        --json "$OUT/unet_train.json" > "$OUT/unet_train.log" 2>&1
    timeout 120 python3 bench/sampling.py --device cuda --samplers dpmpp_2m --steps 20 --n 128 --batch 64 \
        --json "$OUT/sampling.json" > "$OUT/sampling.log" 2>&1
    timeout 90 python3 bench/autoencoder.py --device cuda --size 256 --batch 32 --repeats 10 \
        --json "$OUT/autoencoder.json" > "$OUT/autoencoder.log" 2>&1
    tail -n 3 "$OUT"/*.log
    ;;
*)
    echo "usage: bench/gpu.sh fetch | run" >&2
    exit 2
    ;;
esac
