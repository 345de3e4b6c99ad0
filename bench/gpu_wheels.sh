#!/usr/bin/env bash
# Download the wheels bench/gpu_check.sh needs on a GPU machine that has no package registry:
# SAELens and sparsify and what they need beyond that machine's python3 (bench/gpu_wheels.txt,
# pinned; torch, triton and the rest of that machine's packages excluded). Run it where a
# package registry is reachable; the wheels land in bench/gpu_wheels/ (git-ignored) and
# travel with the checkout as an extra folder (the device tool's carry: ["bench/gpu_wheels"]).
#
#   bash bench/gpu_wheels.sh                    # download into bench/gpu_wheels/, report sizes
#   bash bench/gpu_wheels.sh --list-from PY     # print a fresh pin list from PY's environment
#
# Wheels are for CPython 3.12 on manylinux x86-64 (the GPU machine's python3). A pinned
# package published only as source is built here into a wheel, and must come out pure
# Python (py3-none-any), or the script stops. At the end it checks that the wheels plus
# the checkout's own files stay under the 64 MiB a run may carry, and says which peer can
# travel if they do not.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_PY=${PIP_PYTHON:-python3}
DEST=bench/gpu_wheels
LIMIT_MIB=64

if [ "${1:-}" = "--list-from" ]; then
    [ -n "${2:-}" ] || { echo "gpu_wheels: --list-from needs the python of an environment with sae-lens and eai-sparsify" >&2; exit 2; }
    # The GPU machine's python3 packages (its image's list): never shipped, the peers use them.
    IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
    build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
    cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
    equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
    grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
    interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
    lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
    markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
    multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
    nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
    nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
    onnxruntime onnxscript opencv-python-headless opt-einsum opt-einsum-fx optax optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
    prometheus-client propcache protobuf psutil py-cpuinfo pyarrow pybind11 pygments pyparsing
    pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
    pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
    scikit-build-core scikit-image scikit-learn scipy seaborn sentence-transformers sentencepiece
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
    torch-geometric torchaudio torchdiffeq torchmetrics torchvision tqdm transformers treescope triton
    typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
    xxhash yarl zipp"
    sed -n '1,/^# Regenerate/p' bench/gpu_wheels.txt
    IMAGE="$IMAGE" "$2" - sae-lens eai-sparsify <<'PY'
"""Pins of the roots' dependency closure in this environment, not descending into the image's packages."""
import importlib.metadata as md
import os
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as cn

image = {cn(n) for n in os.environ["IMAGE"].split()}
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "os_name": "posix", "extra": ""}
ship: dict[str, str] = {}


def walk(name: str) -> None:
    key = cn(name)
    if key in ship or key in image:
        return
    dist = md.distribution(name)
    ship[key] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            walk(req.name)


for root in sys.argv[1:]:
    walk(root)
ship["typing-extensions"] = md.version("typing-extensions")  # newer than some images ship; pydantic needs it
for key, version in sorted(ship.items()):
    print(f"{key}=={version}")
PY
    exit 0
fi

PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$DEST"
built=$(mktemp -d)
trap 'rm -rf "$built"' EXIT
while read -r pin; do
    case "$pin" in ''|'#'*) continue ;; esac
    if "$PIP_PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$DEST" "$pin" >/dev/null 2>"$built/err"; then
        continue
    fi
    # Only a source release: build it here; it must be pure Python to run on the GPU machine.
    "$PIP_PY" -m pip wheel -q --no-deps -w "$built" "$pin" >/dev/null 2>>"$built/err" \
        || { cat "$built/err" >&2; echo "gpu_wheels: could not download or build $pin" >&2; exit 1; }
    for w in "$built"/*.whl; do
        case "$w" in
            *-py3-none-any.whl|*-py2.py3-none-any.whl) mv "$w" "$DEST/" ;;
            *) echo "gpu_wheels: $pin builds to $(basename "$w"), not a pure-Python wheel; it cannot travel" >&2; exit 1 ;;
        esac
    done
done < bench/gpu_wheels.txt

# Keep one version of each package (an older download left beside a new pin would stop the install).
ls "$DEST"/*.whl | awk -F/ '{print $NF}' | cut -d- -f1 | tr 'A-Z_.' 'a-z--' | sort | uniq -d | while read -r dup; do
    echo "gpu_wheels: more than one wheel of $dup in $DEST; remove the old one" >&2
done

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
wheels_bytes=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f1)
# What else travels: tracked files and untracked files git does not ignore.
tree_bytes=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null \
    | awk '$2 == "total" { s += $1 } END { print s + 0 }')
total=$(( wheels_bytes + tree_bytes ))
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $(mib "$wheels_bytes") MiB; the checkout's own files $(mib "$tree_bytes") MiB; together $(mib "$total") MiB of the ${LIMIT_MIB} MiB a run may carry"
if [ "$total" -gt $(( LIMIT_MIB * 1048576 )) ]; then
    echo "gpu_wheels: too large to travel together. sparsify alone needs only eai-sparsify, datasets, dill, multiprocess, natsort, schedulefree, simple-parsing and docstring-parser (about 2 MiB); SAELens brings wandb (about 20 MiB) and plotly (about 10 MiB)" >&2
    exit 1
fi
echo "gpu_wheels: run the check with the device tool: command 'bash bench/gpu_check.sh \"\$OUT\"', carry [\"bench/gpu_wheels\"]"
