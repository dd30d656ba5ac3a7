"""Reference tokenization by transformers, for test/tokenizer.test.ts.

usage: tokenizer_reference.py MODEL [--save-pretrained DIR]
       tokenizer_reference.py --make-spm-gguf DIR
       tokenizer_reference.py --make-bpe-gguf DIR
  MODEL  a .gguf file (read with AutoTokenizer.from_pretrained(dir, gguf_file=name))
         or a model folder (AutoTokenizer.from_pretrained(folder)).
  --make-spm-gguf  trains a tiny SentencePiece BPE vocabulary and writes it as
         DIR/spm-{llama,gemma2,phi3}.gguf (tokenizer metadata as llama.cpp's
         converter writes it, one dummy tensor), to test the SentencePiece paths.
  --make-bpe-gguf  writes tiny byte-level BPE vocabularies: DIR/tekken.gguf
         (pre-tokenizer tekken, Mistral-Nemo's) and DIR/deepseek.gguf (control
         tokens outside the byte alphabet, <｜User｜>, as DeepSeek-R1 GGUFs hold).
stdin:  JSON {"texts": [str, ...], "chats": [[{"role", "content"}, ...], ...]}
        (a bare JSON list is taken as "texts").
stdout: JSON {
  "ids":        ids of each text, add_special_tokens=True,
  "ids_plain":  ids of each text, add_special_tokens=False,
  "decoded":    decode(ids) of each text; "decoded_skip": the same, skip_special_tokens=True,
  "raw_ids":    GGUF only: ids from transformers' GGUF reading before the fix below,
  "pre":        GGUF only: tokenizer.ggml.pre,
  "chats":      apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
  "eos_token", "eos_token_id", "bos_token", "add_bos"
}

transformers' GGUF tokenizer ignores a `tokenizer.ggml.pre` it has no regex for,
such as SmolLM's `smollm`, and then splits with the plain GPT-2 pattern. llama.cpp
(and the model's own tokenizer.json) first isolates every digit. For those
pre-tokenizer names "ids" carries the digit split (the original model's
pre-tokenizer) and "raw_ids" transformers' unmodified answer.
"""

import json
import os
import sys
import types
from unittest import mock

DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}


def stub_torch():
    # transformers' GGUF reader imports torch at module level, though reading
    # the tokenizer needs no tensors. Import transformers first (it then records
    # torch as absent), then let that one import succeed with a stand-in.
    import transformers  # noqa: F401
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    class Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return mock.MagicMock(name=f"torch.{name}")

    sys.modules.setdefault("torch", Stub("torch"))
    gguf_utils.is_torch_available = lambda: True


def load(model):
    from transformers import AutoTokenizer

    if os.path.isdir(model):
        return AutoTokenizer.from_pretrained(model), None
    stub_torch()
    from gguf import GGUFReader

    field = GGUFReader(model).fields.get("tokenizer.ggml.pre")
    pre = field.contents() if field is not None else None
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(model)), gguf_file=os.path.basename(model))
    return tok, pre


def tiny_model_writer(path, arch):
    """A GGUF writer with a one-layer model's hyperparameters: the files only carry a vocabulary."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch)
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    return writer


def make_spm_ggufs(out_dir):
    import random

    import numpy as np
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(0)
    words = (
        "the of and to in is was that for on with as by at from this be are it an or which have not "
        "but had his they were their one all there been has more if when will would who so no can"
    ).split()
    lines = [" ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(0, 99999)}" for _ in range(3000)]
    lines += ["def main():", "    return 42", "Ça va très bien, merci! 日本語 テキスト.", "  indented  twice"]
    corpus = os.path.join(out_dir, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    prefix = os.path.join(out_dir, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus,
        model_prefix=prefix,
        vocab_size=480,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user defined, 6 byte
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif tokens[-1] in ("<|im_start|>", "<|im_end|>"):
            types.append(4)
        else:
            types.append(1)
    # spm-bare: llama without a chat template.
    for arch in ("llama", "gemma2", "phi3", "bare"):
        writer = tiny_model_writer(os.path.join(out_dir, f"spm-{arch}.gguf"), "llama" if arch == "bare" else arch)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(sp.bos_id())
        writer.add_eos_token_id(sp.eos_id())
        writer.add_unk_token_id(sp.unk_id())
        writer.add_add_bos_token(True)
        if arch != "bare":
            writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
        writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_bpe_ggufs(out_dir):
    import numpy as np

    os.makedirs(out_dir, exist_ok=True)
    enc = bytes_to_unicode()

    def write(name, pre, merged, specials, template=None):
        # 1 normal, 3 control, 4 user defined
        tokens = [enc[b] for b in range(256)]
        merges = []
        for a, b in merged:
            merges.append(f"{a} {b}")
            tokens.append(a + b)
        types = [1] * len(tokens)
        for text, kind in specials:
            tokens.append(text)
            types.append(kind)
        writer = tiny_model_writer(os.path.join(out_dir, name), "llama")
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(len(tokens) - len(specials))
        writer.add_eos_token_id(len(tokens) - len(specials) + 1)
        writer.add_add_bos_token(False)
        if template:
            writer.add_chat_template(template)
        writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    words = [("H", "e"), ("He", "l"), ("Hel", "l"), ("Hell", "o"), ("W", "o"), ("Wo", "r"), ("Wor", "l"), ("Worl", "d"),
             ("Hello", "World"), ("1", "2"), ("12", "3"), ("\u0120", "x")]
    write("tekken.gguf", "tekken", words, [("<s>", 3), ("</s>", 3)],
          "{{ bos_token }}{% for m in messages %}[INST]{{ m['content'] }}[/INST]{% endfor %}")
    write("deepseek.gguf", "deepseek-r1-qwen", words,
          [("<\uff5cbegin\u2581of\u2581sentence\uff5c>", 3), ("<\uff5cend\u2581of\u2581sentence\uff5c>", 3),
           ("<\uff5cUser\uff5c>", 3), ("<\uff5cAssistant\uff5c>", 3), ("<think>", 4)],
          "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<\uff5cUser\uff5c>{{ m['content'] }}"
          "{% else %}<\uff5cAssistant\uff5c>{{ m['content'] }}<\uff5cend\u2581of\u2581sentence\uff5c>{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}<\uff5cAssistant\uff5c>{% endif %}")


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    if args[0] == "--make-spm-gguf":
        make_spm_ggufs(args[1])
        return
    if args[0] == "--make-bpe-gguf":
        make_bpe_ggufs(args[1])
        return
    model = args[0]
    save_to = args[args.index("--save-pretrained") + 1] if "--save-pretrained" in args else None
    request = json.loads(sys.stdin.read() or "{}")
    if isinstance(request, list):
        request = {"texts": request}
    texts = request.get("texts", [])
    chats = request.get("chats", [])

    tok, pre = load(model)
    if save_to:
        tok.save_pretrained(save_to)

    out = {}
    if pre is not None:
        out["pre"] = pre
        if pre in DIGIT_SPLIT_PRE:
            from tokenizers import pre_tokenizers

            out["raw_ids"] = [tok.encode(t, add_special_tokens=True) for t in texts]
            tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
    out["ids"] = [tok.encode(t, add_special_tokens=True) for t in texts]
    out["ids_plain"] = [tok.encode(t, add_special_tokens=False) for t in texts]
    out["decoded"] = [tok.decode(i) for i in out["ids"]]
    out["decoded_skip"] = [tok.decode(i, skip_special_tokens=True) for i in out["ids"]]
    out["chats"] = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    out["eos_token"] = tok.eos_token
    out["eos_token_id"] = tok.eos_token_id
    out["bos_token"] = tok.bos_token
    out["add_bos"] = bool(getattr(tok, "add_bos_token", False))
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
