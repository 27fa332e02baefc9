#!/usr/bin/env bash
# The whole set-up, in one place: the README's first command runs it, and so does CI
# (.ci/run), so what a new user installs is what CI tests. Run from anywhere; it
# creates .venv in the repository.
set -euo pipefail
cd "$(dirname "$0")"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m venv .venv
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e '.[test]'
# The default face detector of `kdbench prepare` / `predict` (MTCNN; its weights ship inside the
# package, so it works offline). Its metadata pins an old torch, hence --no-deps: its own
# dependencies (numpy, Pillow, requests, torchvision, tqdm) are already ours.
.venv/bin/pip install -q --no-deps facenet-pytorch==2.6.0
