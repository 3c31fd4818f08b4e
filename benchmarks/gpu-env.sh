# Sourced by the GPU scripts on a lent machine (from the repository root, .gpu/ filled by
# benchmarks/gpu-prepare.sh and carried): Avalanche and its imports from the carried wheels where the
# image lacks them, Omniglot from its carried tar, the cache in .gpu-cache/ (ignored and never carried:
# a warm machine's next call finds what this one left there).
if ! python3 -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('avalanche') and u.find_spec('hypnettorch')))"
then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
if [ -z "${CLBENCH_DATA:-}" ]; then
    mkdir -p /tmp/og && { [ -d /tmp/og/omniglot-py ] || tar -xf .gpu/omniglot.tar -C /tmp/og; }
    export CLBENCH_DATA=/tmp/og
fi
export CLBENCH_CACHE=${CLBENCH_CACHE:-$PWD/.gpu-cache}
