#!/usr/bin/env bash
# On the lent GPU machine, in the repository root: install the wheels carried from scripts/gpu-wheels.sh into
# $SITE (default /tmp/site). Safe to run in every call: what is installed stays while the machine stays warm.
# Ray arrives in two calls (.whl-ray1, then .whl-ray2); its parts wait in /tmp/ray-parts until the wheel is whole.
# Then: export PYTHONPATH=$SITE:$PWD
set -euo pipefail
SITE=${SITE:-/tmp/site}
PARTS=/tmp/ray-parts
pip_install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }
mkdir -p "$SITE" "$PARTS"
if [ -d .whl ] && [ ! -f "$SITE/.storyadapter-wheels" ]; then
    pip_install .whl/*.whl
    touch "$SITE/.storyadapter-wheels"
fi
for d in .whl-ray1 .whl-ray2; do [ -d "$d" ] && cp -f "$d"/* "$PARTS"/; done
if [ ! -d "$SITE/ray" ] && [ -f "$PARTS/ray.sha256" ]; then
    wheel=$(cut -d' ' -f3 "$PARTS/ray.sha256")
    cat "$PARTS/$wheel".part-* > "$PARTS/$wheel"
    if (cd "$PARTS" && sha256sum --quiet -c ray.sha256 >/dev/null 2>&1); then
        pip_install "$PARTS/$wheel"
    else
        echo "gpu-setup: ray's wheel is not whole yet (carry .whl-ray2 in the next call); running without Ray" >&2
    fi
    rm -f "$PARTS/$wheel"
fi
[ -f "$SITE/.storyadapter-wheels" ] || echo "gpu-setup: no wheels installed: carry .whl (make gpu-wheels makes it)" >&2
python3 - <<PY
import sys
sys.path[:0] = ["$SITE", "$PWD"]
import torch
for name in ("diffusers", "transformers", "hydra", "ray"):
    try:
        mod = __import__(name)
        print(f"gpu-setup: {name} {getattr(mod, '__version__', '?')}")
    except ImportError as exc:
        print(f"gpu-setup: {name} missing ({exc})")
print(f"gpu-setup: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
PY
