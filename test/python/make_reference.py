#!/usr/bin/env python3
"""Tiny random-weight models, one per supported architecture, and their
reference logits computed by mlx-lm.

Usage: .venv/bin/python test/python/make_reference.py OUT_DIR [--only a,b] [--force]

For every architecture this writes OUT_DIR/<arch>/ with
  config.json            Hugging Face key names, as mlx-lm loads it
  model.safetensors      float32 weights, Hugging Face tensor names
  reference.safetensors  prompt_{i}          int32   (prompt_len,)
                         decode_tokens_{i}   int32   (20,)
                         prefill_logits_{i}  float32 (vocab,)     last prompt position
                         decode_logits_{i}   float32 (20, vocab)  after each decode step
  meta.json              {"architecture", "num_prompts", "decode_steps", ...}
  stamp.json             hash of this script and library versions (idempotence)

The reference runs mlx-lm's own model classes one sequence at a time (batch 1)
with the cache mlx-lm's generate uses (`make_prompt_cache(model)`: KVCache,
RotatingKVCache for gemma3 sliding layers). Decoding is teacher-forced: the
recorded decode tokens are fed, not the argmax.

gemma2: mlx-lm 0.32.2's gemma2 ignores `sliding_window` (every layer attends
to the whole prefix). The config here follows Hugging Face's Gemma2 semantics
(`layer_types`: even layers slide over `sliding_window` tokens), so the
reference for gemma2 runs mlx-lm's gemma2 layers with a windowed causal mask on
the sliding layers (see `gemma2_forward`), which is what transformers computes.
With a window longer than every sequence it equals mlx-lm's plain forward
bit for bit (checked on every run).
"""

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import mlx.core as mx
import mlx_lm
from mlx.utils import tree_flatten
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import _get_classes, load_model

NUM_PROMPTS = 5
DECODE_STEPS = 20
PROMPT_LENGTHS = [3, 7, 12, 19, 25]
VOCAB = 512
SEED = 20240917

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=512,
    torch_dtype="float32",
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# Hugging Face configs (transformers 4.x key names: rope_theta, rope_scaling),
# tiny. Every field the mlx-lm ModelArgs of the architecture reads is present.
CONFIGS = {
    "llama": dict(
        COMMON,
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        num_hidden_layers=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            # small, so that low, medium and high frequency bands all occur
            # with head_dim 16
            "original_max_position_embeddings": 64,
        },
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        tie_word_embeddings=False,
    ),
    "llama_tied": dict(
        COMMON,
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        num_hidden_layers=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        tie_word_embeddings=True,
    ),
    "mistral": dict(
        COMMON,
        model_type="mistral",
        architectures=["MistralForCausalLM"],
        num_hidden_layers=2,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        sliding_window=None,
        hidden_act="silu",
        tie_word_embeddings=False,
    ),
    "qwen2": dict(
        COMMON,
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        num_hidden_layers=2,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        use_sliding_window=False,
        sliding_window=None,
        hidden_act="silu",
        tie_word_embeddings=True,
    ),
    "qwen3": dict(
        COMMON,
        model_type="qwen3",
        architectures=["Qwen3ForCausalLM"],
        num_hidden_layers=2,
        # deliberately != hidden_size / num_attention_heads, as in real Qwen3
        head_dim=32,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling=None,
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=None,
        hidden_act="silu",
        tie_word_embeddings=False,
    ),
    "gemma2": dict(
        COMMON,
        model_type="gemma2",
        architectures=["Gemma2ForCausalLM"],
        num_hidden_layers=4,
        head_dim=32,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        hidden_activation="gelu_pytorch_tanh",
        hidden_act="gelu_pytorch_tanh",
        # != head_dim, so using head_dim**-0.5 as the scale is caught
        query_pre_attn_scalar=24,
        # small caps, so that tanh soft-capping changes the result noticeably
        attn_logit_softcapping=3.0,
        final_logit_softcapping=4.0,
        sliding_window=8,
        layer_types=[
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "full_attention",
        ],
        cache_implementation="hybrid",
        tie_word_embeddings=True,
    ),
    "gemma3": dict(
        COMMON,
        model_type="gemma3_text",
        architectures=["Gemma3ForCausalLM"],
        num_hidden_layers=4,
        head_dim=32,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_local_base_freq=10000.0,
        rope_scaling=None,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=24,
        sliding_window=8,
        # layers 0, 1, 3 slide; layer 2 is global
        sliding_window_pattern=3,
        layer_types=[
            "sliding_attention",
            "sliding_attention",
            "full_attention",
            "sliding_attention",
        ],
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        tie_word_embeddings=True,
    ),
    "phi3": dict(
        COMMON,
        model_type="phi3",
        architectures=["Phi3ForCausalLM"],
        num_hidden_layers=2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        rope_scaling=None,
        partial_rotary_factor=1.0,
        original_max_position_embeddings=512,
        sliding_window=None,
        hidden_act="silu",
        tie_word_embeddings=False,
    ),
}

GEMMA_NORMS = {"gemma2", "gemma3_text"}  # RMSNorm scales by (1 + weight)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def script_hash():
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def stamp_payload():
    return {
        "script_sha256": script_hash(),
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
    }


def arch_seed(name):
    return SEED + int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def random_weights(name, config):
    """float32 weights with the tensor names mlx-lm's model for `config` has
    (which are the Hugging Face names for these architectures)."""
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    params = dict(tree_flatten(model.parameters()))
    if config.get("tie_word_embeddings", False):
        params.pop("lm_head.weight", None)  # gemma3_text always builds one
    rng = np.random.default_rng(arch_seed(name))
    gemma_norm = config["model_type"] in GEMMA_NORMS
    out = {}
    for key in sorted(params):
        shape = tuple(params[key].shape)
        if key.endswith("norm.weight"):
            # plain RMSNorm multiplies by w (around 1); gemma by (1 + w) with
            # w around 0. Random either way, so a wrong formula shows.
            base = 0.0 if gemma_norm else 1.0
            w = base + 0.2 * rng.standard_normal(shape)
        elif key.endswith("embed_tokens.weight") or key.endswith("lm_head.weight"):
            w = 0.5 * rng.standard_normal(shape)
        elif key.endswith(".bias"):
            w = 0.2 * rng.standard_normal(shape)
        elif key.endswith(".weight") and len(shape) == 2:
            # std ~ 1 / sqrt(fan_in): activations keep their scale, attention
            # scores are far from uniform
            w = rng.standard_normal(shape) / math.sqrt(shape[1])
        else:
            raise ValueError(f"{name}: unexpected parameter {key} {shape}")
        out[key] = mx.array(w.astype(np.float32))
    return out


def fixed_tokens():
    rng = np.random.default_rng(SEED)
    prompts, decodes = [], []
    for n in PROMPT_LENGTHS:
        # avoid ids 0-2 (pad / bos / eos) so no engine treats them specially
        prompts.append(rng.integers(3, VOCAB, size=n).astype(np.int32))
        decodes.append(rng.integers(3, VOCAB, size=DECODE_STEPS).astype(np.int32))
    return prompts, decodes


def gemma2_forward(model, inputs, cache, window, layer_types):
    """mlx-lm's gemma2 Model.__call__ with Hugging Face's sliding window:
    layers whose layer_type is sliding_attention see only the last `window`
    positions (query q attends to key k iff q - window < k <= q)."""
    args = model.args
    h = model.model.embed_tokens(inputs)
    h = h * (args.hidden_size**0.5)
    if cache is None:
        cache = [None] * len(model.layers)
    N = h.shape[1]
    for layer, c, lt in zip(model.model.layers, cache, layer_types):
        offset = c.offset if c is not None else 0
        if lt == "sliding_attention" and window is not None:
            mask = create_causal_mask(N, offset, window_size=window)
        else:
            # what mlx-lm's gemma2 builds: an array mask, None for one token
            mask = create_causal_mask(N, offset) if N > 1 else None
        h = layer(h, mask, c)
    out = model.model.norm(h)
    out = model.model.embed_tokens.as_linear(out)
    cap = model.final_logit_softcapping
    return mx.tanh(out / cap) * cap


def forward_fn(config, model):
    if config["model_type"] == "gemma2":
        window, types = config["sliding_window"], config["layer_types"]
        return lambda x, cache=None: gemma2_forward(model, x, cache, window, types)
    return lambda x, cache=None: model(x, cache=cache)


def run_reference(config, model, prompts, decodes):
    fwd = forward_fn(config, model)
    out = {}
    for i, (p, d) in enumerate(zip(prompts, decodes)):
        cache = make_prompt_cache(model)
        logits = fwd(mx.array(p)[None], cache)
        prefill = logits[0, -1].astype(mx.float32)
        mx.eval(prefill)
        steps = []
        for t in d.tolist():
            logits = fwd(mx.array([[t]], dtype=mx.int32), cache)
            step = logits[0, -1].astype(mx.float32)
            mx.eval(step)
            steps.append(step)
        out[f"prompt_{i}"] = mx.array(p, dtype=mx.int32)
        out[f"decode_tokens_{i}"] = mx.array(d, dtype=mx.int32)
        out[f"prefill_logits_{i}"] = prefill
        out[f"decode_logits_{i}"] = mx.stack(steps)
    mx.eval(out)
    return out


def full_sequence_check(config, model, ref, prompts, decodes):
    """The cached, token-by-token logits must agree with one cache-free pass
    over prompt + decode tokens (all but the last)."""
    fwd = forward_fn(config, model)
    worst = 0.0
    for i, (p, d) in enumerate(zip(prompts, decodes)):
        seq = np.concatenate([p, d])
        logits = fwd(mx.array(seq)[None])[0]
        n = len(p)
        a = mx.concatenate([ref[f"prefill_logits_{i}"][None], ref[f"decode_logits_{i}"]])
        b = logits[n - 1 : n - 1 + 1 + DECODE_STEPS]
        worst = max(worst, mx.max(mx.abs(a - b)).item())
    return worst


def sanity(name, ref):
    """Logits must vary, and greedy choices must differ across steps."""
    stds, argmaxes = [], set()
    for i in range(NUM_PROMPTS):
        d = np.array(ref[f"decode_logits_{i}"])
        stds.append(float(d.std(axis=-1).mean()))
        argmaxes.update(d.argmax(axis=-1).tolist())
        argmaxes.add(int(np.array(ref[f"prefill_logits_{i}"]).argmax()))
        if not np.isfinite(d).all():
            raise RuntimeError(f"{name}: non-finite logits")
    std = float(np.mean(stds))
    if std < 0.1 or len(argmaxes) < 10:
        raise RuntimeError(
            f"{name}: degenerate logits (std {std:.3f}, {len(argmaxes)} distinct argmax)"
        )
    return std, len(argmaxes)


def build(name, config, out_dir, prompts, decodes):
    t0 = time.time()
    d = out_dir / name
    d.mkdir(parents=True, exist_ok=True)
    for f in ("stamp.json", "meta.json"):
        (d / f).unlink(missing_ok=True)

    weights = random_weights(name, config)
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    mx.save_safetensors(str(d / "model.safetensors"), weights, metadata={"format": "pt"})

    # Load back the way mlx-lm loads a model folder.
    model, _ = load_model(d)
    loaded = dict(tree_flatten(model.parameters()))
    if sorted(loaded) != sorted(weights):
        raise RuntimeError(f"{name}: parameter names differ after load_model")
    for k, v in weights.items():
        if loaded[k].dtype != mx.float32 or not mx.array_equal(loaded[k], v).item():
            raise RuntimeError(f"{name}: {k} differs after load_model")

    ref = run_reference(config, model, prompts, decodes)

    # Same logits from a model built from the in-memory weights (no file).
    model_class, args_class = _get_classes(config)
    direct = model_class(args_class.from_dict(config))
    w = dict(weights)
    if hasattr(direct, "sanitize"):
        w = direct.sanitize(w)
    direct.load_weights(list(w.items()), strict=True)
    direct.eval()
    ref2 = run_reference(config, direct, prompts[:2], decodes[:2])
    for k in ref2:
        if not mx.array_equal(ref2[k], ref[k]).item():
            raise RuntimeError(f"{name}: logits of the loaded model differ ({k})")

    if config["model_type"] == "gemma2":
        # With a window longer than any sequence, the windowed forward must be
        # mlx-lm's own gemma2 forward, bit for bit.
        wide = dict(config, sliding_window=10_000)
        a = run_reference(wide, model, prompts[-1:], decodes[-1:])
        b = run_reference(dict(config, model_type="plain"), model, prompts[-1:], decodes[-1:])
        for k in a:
            if not mx.array_equal(a[k], b[k]).item():
                raise RuntimeError(f"gemma2: windowed forward != mlx-lm forward ({k})")

    worst = full_sequence_check(config, model, ref, prompts, decodes)
    if worst > 1e-3:
        raise RuntimeError(f"{name}: cached vs full-sequence logits differ by {worst}")
    std, distinct = sanity(name, ref)

    mx.save_safetensors(str(d / "reference.safetensors"), ref)
    meta = {
        "architecture": name,
        "model_type": config["model_type"],
        "num_prompts": NUM_PROMPTS,
        "decode_steps": DECODE_STEPS,
        "prompt_lengths": [len(p) for p in prompts],
        "vocab_size": config["vocab_size"],
        "dtype": "float32",
        "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__,
        "cache": "mlx_lm.models.cache.make_prompt_cache(model), batch 1",
        "cached_vs_full_sequence_max_abs_diff": worst,
        "logit_std": std,
        "distinct_argmax": distinct,
    }
    if config["model_type"] == "gemma2":
        meta["note"] = (
            "mlx-lm's gemma2 ignores sliding_window; this reference applies it "
            "on layers whose layer_types entry is sliding_attention "
            "(Hugging Face semantics: key k visible to query q iff q - window < k <= q)."
        )
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (d / "stamp.json").write_text(json.dumps(stamp_payload(), indent=2) + "\n")
    log(
        f"{name}: ok in {time.time() - t0:.1f}s (logit std {std:.2f}, "
        f"{distinct} distinct argmax, cached vs full {worst:.2e})"
    )


# mlx-community style quantized folders: the float model quantized by mlx-lm
# itself, with "quantization" in config.json; the reference is mlx-lm running
# the quantized model (quantized_matmul).
QUANTIZED = {"llama_tied_q4": ("llama_tied", 32, 4), "qwen3_q8": ("qwen3", 64, 8)}


def build_quantized(name, out_dir, prompts, decodes):
    import mlx.nn as nn

    t0 = time.time()
    base, group_size, bits = QUANTIZED[name]
    d = out_dir / name
    d.mkdir(parents=True, exist_ok=True)
    for f in ("stamp.json", "meta.json"):
        (d / f).unlink(missing_ok=True)
    config = dict(CONFIGS[base], quantization={"group_size": group_size, "bits": bits})
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    w = random_weights(base, CONFIGS[base])
    if hasattr(model, "sanitize"):
        w = model.sanitize(w)
    model.load_weights(list(w.items()), strict=True)
    nn.quantize(model, group_size=group_size, bits=bits)
    weights = dict(tree_flatten(model.parameters()))
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    mx.save_safetensors(str(d / "model.safetensors"), weights, metadata={"format": "mlx"})
    loaded, _ = load_model(d)
    if not any(k.endswith(".scales") for k, _ in tree_flatten(loaded.parameters())):
        raise RuntimeError(f"{name}: mlx-lm did not load the model quantized")
    ref = run_reference(config, loaded, prompts, decodes)
    std, distinct = sanity(name, ref)
    mx.save_safetensors(str(d / "reference.safetensors"), ref)
    meta = {
        "architecture": name, "model_type": config["model_type"], "num_prompts": NUM_PROMPTS,
        "decode_steps": DECODE_STEPS, "quantization": config["quantization"], "mlx": mx.__version__,
        "mlx_lm": mlx_lm.__version__, "logit_std": std, "distinct_argmax": distinct,
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (d / "stamp.json").write_text(json.dumps(stamp_payload(), indent=2) + "\n")
    log(f"{name}: ok in {time.time() - t0:.1f}s ({bits}-bit, group {group_size}; logit std {std:.2f})")


def up_to_date(d):
    files = ["config.json", "model.safetensors", "reference.safetensors", "meta.json"]
    if not all((d / f).exists() for f in files):
        return False
    try:
        return json.loads((d / "stamp.json").read_text()) == stamp_payload()
    except (OSError, ValueError):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--only", help="comma-separated architectures")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--list", action="store_true", help="print the architectures it builds and exit")
    a = ap.parse_args()
    if a.list:
        print("\n".join(list(CONFIGS) + list(QUANTIZED)))
        return

    mx.set_default_device(mx.cpu)
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    known = list(CONFIGS) + list(QUANTIZED)
    names = a.only.split(",") if a.only else known
    for n in names:
        if n not in known:
            ap.error(f"unknown architecture {n}; known: {', '.join(known)}")
    prompts, decodes = fixed_tokens()
    for name in names:
        if not a.force and up_to_date(out_dir / name):
            log(f"{name}: up to date")
            continue
        if name in QUANTIZED:
            build_quantized(name, out_dir, prompts, decodes)
        else:
            build(name, CONFIGS[name], out_dir, prompts, decodes)


if __name__ == "__main__":
    main()
