"""llama.cpp's side of bench/gguf-kquants.ts (run with .venv-llamacpp's python).

  quantize SRC DST TYPE       requantize SRC into a llama.cpp file type (Q4_K_M, ...)
  greedy MODEL N TOKENS_JSON  the first N greedy tokens after the prompt tokens
"""
import ctypes
import json
import sys

import llama_cpp


def quantize(src, dst, file_type):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + file_type)
    # The default model is itself quantized (Q4_1): requantizing is what a
    # user's converter would refuse without this flag.
    params.allow_requantize = True
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize {file_type} failed ({rc})")


def greedy(model, n, prompt):
    llm = llama_cpp.Llama(model_path=model, n_ctx=1024, n_threads=1, verbose=False)
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if len(out) >= n:
            break
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "quantize":
        quantize(*sys.argv[2:5])
    else:
        greedy(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))
