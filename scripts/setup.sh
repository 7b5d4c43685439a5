#!/usr/bin/env bash
# Set up a fresh machine: Debian's offline Fashion-MNIST, a virtualenv in .venv,
# and kdkeras installed (editable) with its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] installing Debian's dataset-fashion-mnist"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "[setup] installing kdkeras and its pinned dependencies"
.venv/bin/python -m pip install -q -e ".[test]" 2>&1 | grep -v "is ignored" || true
TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python -c "import kdkeras, tensorflow as tf, keras; print('[setup] kdkeras', kdkeras.__version__, '| TF', tf.__version__, '| Keras', keras.__version__)"
