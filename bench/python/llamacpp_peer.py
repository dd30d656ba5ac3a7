#!/usr/bin/env python3
"""llama.cpp's side of the engine benchmark: the same prompts answered one at
a time by llama-cpp-python (a single stream), on the same GGUF file.

Usage:
  .venv-llamacpp/bin/python bench/python/llamacpp_peer.py --model FILE.gguf \
      --prompt-file F [--max-tokens 64] [--repeats 3] [--threads 2] [--n-ctx 8192]

--prompt-file: JSON list of prompts, each a list of token ids (the same ids
our engine gets; the GGUF carries the same vocabulary).

Each prompt gets exactly --max-tokens tokens, greedy, EOS ignored (the loop
stops itself), as our engine's rows do. `Llama.generate` keeps the KV of the
previous prompt and evaluates only what differs from it, so questions about
the same file after the first skip the file: llama.cpp's own prefix reuse.
Between repeats the context is reset, so nothing carries over.

Per repeat: wall_s around all prompts; prefilled_tokens (what llama.cpp
evaluated: n_tokens after the prompt, less what it kept); prefill_s (time to
each prompt's first token, summed); decode_tps = tokens after the first of
each prompt / the time spent producing them. One JSON object to stdout.
"""

import argparse
import json
import statistics
import sys
import time

from llama_cpp import Llama


def run_once(llm: Llama, prompts: list[list[int]], max_tokens: int) -> dict:
    llm.reset()
    prefill_s = decode_s = 0.0
    prefilled = decoded = 0
    start = time.perf_counter()
    for prompt in prompts:
        kept = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens], prompt[:-1]):
            if a != b:
                break
            kept += 1
        t0 = time.perf_counter()
        produced = 0
        for _token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            produced += 1
            if produced == 1:
                t1 = time.perf_counter()
                prefill_s += t1 - t0
                prefilled += len(prompt) - kept
            if produced == max_tokens:
                break
        decode_s += time.perf_counter() - t1
        decoded += produced - 1
    wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "prefill_s": prefill_s,
        "prefilled_tokens": prefilled,
        "prompt_tokens": sum(len(p) for p in prompts),
        "generated_tokens": decoded + len(prompts),
        "decode_tps": decoded / decode_s if decode_s > 0 else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-file", required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=8192)
    args = ap.parse_args()

    with open(args.prompt_file) as f:
        prompts = json.load(f)
    longest = max(len(p) for p in prompts) + args.max_tokens
    if longest > args.n_ctx:
        sys.exit(f"llamacpp_peer: a prompt plus --max-tokens needs {longest} tokens, over --n-ctx {args.n_ctx}")
    llm = Llama(model_path=args.model, n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                n_gpu_layers=0, verbose=False)
    run_once(llm, prompts[:1], 4)  # warm-up
    repeats = []
    for r in range(args.repeats):
        repeats.append(run_once(llm, prompts, args.max_tokens))
        print(f"[llama.cpp] repeat {r + 1}: {repeats[-1]['wall_s']:.1f} s, "
              f"{repeats[-1]['decode_tps']:.1f} tok/s decode", file=sys.stderr)
    import llama_cpp

    json.dump({
        "llama_cpp_python": llama_cpp.__version__,
        "threads": args.threads,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "repeats": repeats,
        "wall_s": statistics.median(r["wall_s"] for r in repeats),
        "decode_tps": statistics.median(r["decode_tps"] for r in repeats),
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
