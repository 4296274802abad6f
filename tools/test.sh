#!/usr/bin/env bash
# The whole test suite: Rust tests plus the official `openai` Python client against
# `qforge serve`. The client goes into a venv under target/ (pinned; PyPI only).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pyenv
if ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check openai==3.57.0
fi
export QFORGE_PYTHON="$PWD/$venv/bin/python" QFORGE_REQUIRE_OPENAI=1
cargo test --workspace "$@"
