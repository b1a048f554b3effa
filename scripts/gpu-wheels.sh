#!/usr/bin/env bash
# Fetches the Python 3.12 x86-64 wheels that the lent GPU machine lacks (its image has torch, pillow, pyarrow,
# numpy, pyyaml, requests, msgpack, protobuf, click ... but not these), pinned to the versions of this venv.
# One device call carries at most 64 MiB (the working tree included), and ray's wheel alone is ~78 MB, so it is cut in two:
#   .whl/        everything but ray                        (carry with the first call)
#   .whl-ray1/   first 30 MB of ray's wheel                  (carry with the first call: 26 + 30 MB)
#   .whl-ray2/   the rest, ~48 MB                         (carry with the second call, machine still warm)
# All three are git-ignored. On the GPU machine, scripts/gpu-setup.sh joins and installs them.
# Usage: scripts/gpu-wheels.sh            (PY=path/to/venv/python to read versions from another venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
PART_MB=${PART_MB:-30}

version() { "$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1"; }
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform any)

rm -rf .whl .whl-ray1 .whl-ray2 .whl-tmp
mkdir -p .whl .whl-ray1 .whl-ray2 .whl-tmp
# The renderer and its configs; transformers and the hub client too, since the image's may be older than ours.
# open-clip-torch only for its CLIP vocabulary file (sdxl-random's tokenizers).
PKGS=(diffusers hydra-core omegaconf importlib-metadata lazy-importer transformers huggingface-hub tokenizers
      safetensors open-clip-torch
      # ray's needs the image lacks
      jsonschema jsonschema-specifications referencing rpds-py)
for name in "${PKGS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl "$name==$(version "$name")"
done
# antlr4's runtime (hydra's parser) is published as a source archive only: build its pure-Python wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl-tmp "ray==$(version ray)"
ray_whl=$(ls .whl-tmp/ray-*.whl)
(cd .whl-tmp && sha256sum "$(basename "$ray_whl")" > ray.sha256)
split -b "${PART_MB}M" -d "$ray_whl" ".whl-tmp/$(basename "$ray_whl").part-"
mv .whl-tmp/*.part-00 .whl-tmp/ray.sha256 .whl-ray1/
mv .whl-tmp/*.part-* .whl-ray2/
rm -rf .whl-tmp
du -sh .whl .whl-ray1 .whl-ray2
