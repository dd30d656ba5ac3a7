#!/usr/bin/env python3
"""mlx-lm's side of the engine benchmark: batched greedy decoding with
`mlx_lm.generate.batch_generate`.

Usage:
  .venv/bin/python bench/python/mlx_lm_batch.py --model DIR \
      [--batch-sizes 1,2,4,8,16,32] [--max-tokens 128] [--repeats 3] \
      [--prompt-file F] [--stop-at-eos] [--raw-text]

--prompt-file: JSON list of prompts, each a list of token ids or a string.
Strings go through the model's chat template (one user message, generation
prompt added) unless --raw-text; then they are encoded as they are. A batch of
size b takes prompts 0..b-1, cycling through the list. Without a file, a
built-in set of questions is used.

Every row decodes exactly --max-tokens tokens unless --stop-at-eos (the
tokenizer's EOS ids are then passed to batch_generate as stop tokens), so that
runs are comparable across engines.

For each batch size: one untimed warm-up run (the first batch size also
warms up the process; --warm-up-prompt-tokens cuts its prompts short, since
a full run of long prompts takes minutes and warms nothing more), then
--repeats timed runs. A run is one
`batch_generate(model, tokenizer, prompts, max_tokens=..., sampler=greedy,
prefill_batch_size=b, completion_batch_size=b)` call: the whole batch is
prefilled together and decoded together (mlx-lm's defaults of 8 / 32 would
split larger batches into prefill waves).

Figures come from the BatchStats batch_generate returns (mlx-lm's own
timers, time.perf_counter around its prefill and decode calls):
  prefill_tps      = stats.prompt_tps: prompt tokens / prompt time. mlx-lm
                     prefills all but the last token of every prompt here;
                     the last one goes through the first decode step.
  decode_tps       = stats.generation_tps: generated tokens of all rows /
                     (wall time - prompt time), i.e. the whole decode phase.
  decode_step_tps  = stats.decode_tps: generated tokens / time inside the
                     decode steps only (excludes per-step bookkeeping).
  peak_memory_bytes = mx.get_peak_memory() after the run, reset before it
                     (includes the resident weights).
  wall_s           = time.perf_counter() around the batch_generate call.
One JSON object goes to stdout; progress to stderr.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.generate import batch_generate
from mlx_lm.sample_utils import make_sampler
from mlx_lm.utils import load, load_model

DEFAULT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences what a hash map is and when to use one.",
    "List three differences between TCP and UDP.",
    "What does this Python code do? for i in range(10): print(i * i)",
    "Give me a short summary of the plot of Romeo and Juliet.",
    "How do I reverse a string in JavaScript?",
    "Translate 'good morning, how are you?' into Spanish and French.",
]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


class _Tokenizer:
    """What batch_generate needs from a tokenizer: eos_token_ids (its stop
    tokens) and decode. Empty eos ids make every row run to max_tokens."""

    def __init__(self, inner, stop_at_eos):
        self.inner = inner
        self.eos_token_ids = list(inner.eos_token_ids) if (inner and stop_at_eos) else []

    def decode(self, ids):
        return self.inner.decode(ids) if self.inner is not None else ""


def has_tokenizer(model_dir):
    return (model_dir / "tokenizer.json").exists() or (
        model_dir / "tokenizer_config.json"
    ).exists()


def encode_prompts(raw, tokenizer, raw_text):
    out = []
    for p in raw:
        if isinstance(p, list):
            out.append([int(t) for t in p])
            continue
        if tokenizer is None:
            raise SystemExit("string prompts need a model folder with a tokenizer")
        if not raw_text and getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True
            )
        else:
            ids = tokenizer.encode(p)
        out.append(list(ids))
    if not out or any(len(p) == 0 for p in out):
        raise SystemExit("empty prompt list or empty prompt")
    return out


def blas_libraries():
    """Shared libraries with 'blas' in their name mapped into this process
    (the wheel's libblas may be a link to OpenBLAS)."""
    found = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "blas" in os.path.basename(path).lower():
                    found.add(os.path.realpath(path))
    except OSError:
        pass
    return sorted(found)


def one_run(model, tok, prompts, max_tokens, b):
    mx.clear_cache()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    resp = batch_generate(
        model,
        tok,
        prompts,
        max_tokens=max_tokens,
        sampler=make_sampler(temp=0.0),
        prefill_batch_size=b,
        completion_batch_size=b,
        return_token_ids=True,
    )
    wall = time.perf_counter() - t0
    peak = mx.get_peak_memory()
    s = resp.stats
    returned = sum(len(t) for t in resp.token_ids)
    return {
        "decode_tps": s.generation_tps,
        "prefill_tps": s.prompt_tps,
        "decode_step_tps": s.decode_tps,
        # tokens the model produced (a stop token included), and the ones
        # batch_generate hands back (stop tokens left out)
        "generated_tokens": s.generation_tokens,
        "returned_tokens": returned,
        "prefill_tokens": s.prompt_tokens,
        "prompt_tokens": sum(len(p) for p in prompts),
        "prefill_s": s.prompt_time,
        "decode_s": s.generation_time,
        "peak_memory_bytes": int(peak),
        "wall_s": wall,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="mlx-lm model folder")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt-file")
    ap.add_argument("--stop-at-eos", action="store_true")
    ap.add_argument("--raw-text", action="store_true", help="no chat template for string prompts")
    ap.add_argument("--warm-up-prompt-tokens", type=int, help="truncate the warm-up run's prompts to this many tokens")
    a = ap.parse_args()

    batch_sizes = [int(x) for x in a.batch_sizes.split(",") if x.strip()]
    if not batch_sizes or min(batch_sizes) < 1 or a.max_tokens < 1 or a.repeats < 1:
        ap.error("batch sizes, --max-tokens and --repeats must be positive")

    model_dir = Path(a.model)
    t0 = time.perf_counter()
    if has_tokenizer(model_dir):
        model, tokenizer = load(str(model_dir))
    else:
        model, _ = load_model(model_dir)
        tokenizer = None
    mx.eval(model.parameters())
    load_s = time.perf_counter() - t0
    log(f"loaded {model_dir} in {load_s:.1f}s on {mx.default_device()}")

    raw = DEFAULT_PROMPTS
    if a.prompt_file:
        raw = json.loads(Path(a.prompt_file).read_text())
        if not isinstance(raw, list):
            raise SystemExit("--prompt-file must hold a JSON list")
    prompts = encode_prompts(raw, tokenizer, a.raw_text)
    tok = _Tokenizer(tokenizer, a.stop_at_eos)

    def batch_of(b):
        return [prompts[i % len(prompts)] for i in range(b)]

    warm = batch_of(batch_sizes[0])
    if a.warm_up_prompt_tokens:
        warm = [p[: a.warm_up_prompt_tokens] for p in warm]
    log(f"warm-up: batch {batch_sizes[0]}, {a.max_tokens} tokens")
    one_run(model, tok, warm, a.max_tokens, batch_sizes[0])

    results = []
    for b in batch_sizes:
        batch = batch_of(b)
        if b != batch_sizes[0]:
            one_run(model, tok, batch, min(a.max_tokens, 8), b)  # untimed
        runs = []
        for r in range(a.repeats):
            res = one_run(model, tok, batch, a.max_tokens, b)
            runs.append(res)
            log(
                f"batch {b:3d} run {r + 1}/{a.repeats}: decode {res['decode_tps']:8.1f} tok/s, "
                f"prefill {res['prefill_tps']:8.1f} tok/s, {res['generated_tokens']} tokens, "
                f"peak {res['peak_memory_bytes'] / 2**20:.0f} MiB, {res['wall_s']:.1f}s"
            )
        results.append(
            {
                "batch": b,
                "repeats": runs,
                "median_decode_tps": statistics.median(x["decode_tps"] for x in runs),
                "median_prefill_tps": statistics.median(x["prefill_tps"] for x in runs),
            }
        )

    out = {
        "engine": "mlx-lm",
        "version": mlx_lm.__version__,
        "mlx_version": mx.__version__,
        "device": str(mx.default_device()),
        "platform": f"{platform.system()} {platform.machine()}",
        "blas": blas_libraries(),
        "model": str(model_dir),
        "max_tokens": a.max_tokens,
        "stop_at_eos": a.stop_at_eos,
        "num_prompts": len(prompts),
        "prompt_lengths": [len(p) for p in prompts],
        "load_s": load_s,
        "method": (
            "mlx_lm.generate.batch_generate, greedy, prefill_batch_size = "
            "completion_batch_size = batch; decode_tps = BatchStats.generation_tps "
            "(generated tokens of all rows / (wall - prompt time)); prefill_tps = "
            "BatchStats.prompt_tps; peak memory = mx.get_peak_memory() after "
            "mx.reset_peak_memory()"
        ),
        "results": results,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
