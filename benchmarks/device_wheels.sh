#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on a lent GPU machine (Python 3.12 with its own torch, torchvision, pytest,
# scipy, pandas, ...; no network), as Python 3.12 wheels in .whl/ plus trimmed pure-Python folders in
# .whl/site.tgz. The device tool carries at most 64 MiB with the working tree, so there are two profiles:
#
#   bash benchmarks/device_wheels.sh tests   # gpu_check --steps tests,updates (faiss, avalanche: every method);
#                                            #   the machine's numpy (2.5) stays: no quadruped there
#   bash benchmarks/device_wheels.sh run     # gpu_check --steps whole_run,egl_x4 (numpy 2.3.5 for quadruped)
#
# Then, there: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
#   tar xzf .whl/site.tgz -C /tmp && export PYTHONPATH=/tmp/site:$PWD   (see the note of issue 15, 2026-12-04).
# Versions are this project's pins (pyproject.toml); dm_control and wandb are trimmed of what is never
# imported here (locomotion assets, the dog's meshes, wandb's Go binary).
set -euo pipefail
profile=${1:?usage: device_wheels.sh tests|run}
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
rm -rf .whl && mkdir -p .whl/site
SP=$(.venv/bin/python -c "import site; print(site.getsitepackages()[0])")
common=(mujoco==3.3.0 dm-env==1.6 dm-tree==0.1.10 glfw==2.11.0 PyOpenGL==3.1.10 mlflow-skinny==3.17.2
        mlflow-tracing==3.17.2 cachetools databricks-sdk fastapi starlette gitpython gitdb smmap importlib_metadata
        opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions pydantic
        pydantic-core annotated-types typing-inspection python-dotenv sqlparse uvicorn SQLAlchemy==2.1.9
        alembic Mako google-auth pyasn1 pyasn1-modules cryptography cffi pycparser gymnasium==1.4.0
        farama-notifications)
case $profile in
  tests) extra=(faiss-cpu==1.15.1 avalanche-lib==0.6.0 pytorchcv==0.0.74 qpsolvers gdown beautifulsoup4 soupsieve
                dill platformdirs) ;;
  run) extra=(numpy==2.3.5) ;;
  *) echo "unknown profile $profile; valid: tests, run" >&2; exit 2 ;;
esac
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${common[@]}" "${extra[@]}"
cp -r "$SP/dm_control" "$SP"/dm_control-*.dist-info .whl/site/
(cd .whl/site/dm_control && rm -rf locomotion manipulation suite/dog_assets mujoco/testing blender third_party \
  suite/all_domains.png && find . -name "*_test.py" -delete)
if [ "$profile" = tests ]; then
  cp -r "$SP/GPUtil" "$SP"/gputil-*.dist-info .whl/site/      # avalanche imports it; no wheel exists
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d /tmp/wandb-wheel wandb==0.31.0
  (cd .whl/site && python3 -m zipfile -e /tmp/wandb-wheel/wandb-0.31.0-*.whl . && rm -rf wandb/bin)
fi
find .whl/site -name __pycache__ -prune -exec rm -rf {} +
(cd .whl && tar czf site.tgz site && rm -rf site)
du -sh .whl
