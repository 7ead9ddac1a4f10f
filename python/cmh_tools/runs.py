"""Reading what cmh writes: run folders, report.json and bundles.

A run folder (``cmh train … --out RUN``) holds ``run.json`` (the configuration), ``report.json``
(summary and every run) and one ``bitsB-seedS/`` folder per code length and seed; ``cmh demo --out
DIR`` writes ``DIR/<protocol>/<method>/bitsB-seedS/``. Each ``bitsB-seedS/`` folder (a :class:`Run`)
holds:

- ``query_{image,text}.npy``, ``db_{image,text}.npy``: int8 ±1 codes of the queries and of the
  database encoded by the hash functions, with ``*_packed.npy`` twins;
- ``train_B.npy``: the learned training codes B (runs whose database is the training set and
  whose method learns B);
- ``query_labels.npy``, ``db_labels.npy``: uint8 label rows;
- ``split_{train,query,database}.npy``: item indices into the bundle;
- ``report.json`` and ``model/``.
"""

import json
import os

import numpy as np

from .codes import load_codes
from .metrics import evaluate
from .models import MODALITIES, load_model, modality_index

__all__ = ["Bundle", "Run", "find_runs", "load_bundle", "read_report", "write_bundle"]

# report.json's directions: (query modality, database modality).
DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image"), "i2i": ("image", "image"), "t2t": ("text", "text")}


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def read_report(path):
    """``report.json`` as a dict, from the file or the folder holding it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "report.json")
    return _read_json(path)


class Run:
    """One trained and evaluated model: a ``bitsB-seedS/`` folder."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isfile(os.path.join(self.path, "report.json")):
            raise FileNotFoundError(f"{self.path}: not a run folder (no report.json)")
        self.report = read_report(self.path)
        self.method = self.report["method"]
        self.bits = int(self.report["bits"])
        self.seed = self.report["seed"]
        self.protocol = self.report["protocol"]
        #: ``learned-B`` (i2t / t2i search the learned training codes B) or ``encoded``.
        self.convention = self.report["database_convention"]

    def __repr__(self):
        return f"<Run {self.method} {self.bits} bits seed {self.seed}: {self.path}>"

    def _file(self, name):
        return os.path.join(self.path, name)

    def codes(self, stem):
        """The int8 ±1 codes of ``STEM.npy``, checked against ``STEM_packed.npy``."""
        return load_codes(self._file(f"{stem}.npy"), self.bits)

    def query_codes(self, modality):
        return self.codes(f"query_{MODALITIES[modality_index(modality)]}")

    def db_codes(self, modality):
        """Database codes encoded by the hash function of ``modality``."""
        return self.codes(f"db_{MODALITIES[modality_index(modality)]}")

    def train_codes(self):
        """The learned training codes B, or None when the run has none."""
        return self.codes("train_B") if os.path.isfile(self._file("train_B.npy")) else None

    def labels(self, part):
        """Label rows of ``"query"`` or ``"db"``."""
        return np.load(self._file(f"{part}_labels.npy"))

    def split(self, part):
        """Bundle item indices of ``"train"``, ``"query"`` or ``"database"``."""
        return np.load(self._file(f"split_{part}.npy"))

    def model(self):
        """The numpy encoder of the run's model (see :func:`cmh_tools.load_model`)."""
        return load_model(self._file("model"))

    def database(self, key):
        """The database codes report.json's ``key`` was measured on: ``i2t`` / ``t2i`` under the
        run's convention (B when learned-B), ``i2t_encoded`` / ``t2i_encoded``, ``i2i``, ``t2t``."""
        direction = key.replace("_encoded", "")
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {key!r}; expected one of i2t, t2i, i2t_encoded, t2i_encoded, i2i, t2t")
        if key in ("i2t", "t2i") and self.convention == "learned-B":
            return self.train_codes()
        return self.db_codes(DIRECTIONS[direction][1])

    def evaluate(self, key, topk=None, precision_at=(), pr_curve=False):
        """Recomputes report.json's ``key`` from the exported codes and labels (see
        :func:`cmh_tools.evaluate`)."""
        q = self.query_codes(DIRECTIONS[key.replace("_encoded", "")][0])
        return evaluate(q, self.database(key), self.labels("query"), self.labels("db"), topk, precision_at, pr_curve)

    def config(self):
        """``run.json`` of the ``cmh train`` folder above this run ({} when absent)."""
        p = os.path.join(os.path.dirname(os.path.abspath(self.path)), "run.json")
        return _read_json(p) if os.path.isfile(p) else {}

    def bundle(self, data=None):
        """The bundle the run was trained on: ``data``, else the ``data`` of run.json, as written
        (relative to the working folder) or relative to a folder above the run. None when it
        cannot be found."""
        candidates = [data] if data else []
        path = "" if data else self.config().get("data", "")
        if path:
            candidates.append(path)
            if not os.path.isabs(path):
                d = os.path.abspath(self.path)
                while os.path.dirname(d) != d:
                    d = os.path.dirname(d)
                    candidates.append(os.path.join(d, path))
        for cand in candidates:
            if os.path.isfile(os.path.join(cand, "bundle.json")):
                return load_bundle(cand)
        return None


def find_runs(root):
    """Every run folder at or below ``root`` (a run, a ``cmh train`` folder, a ``cmh demo``
    folder), sorted by path."""
    root = os.fspath(root)
    runs = []
    for d, _, files in os.walk(root):
        if "report.json" in files and "query_image.npy" in files:
            runs.append(Run(d))
    return sorted(runs, key=lambda r: r.path)


class Bundle:
    """A cmh dataset bundle: ``bundle.json`` and its ``.npy`` files (read when asked for)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.manifest = _read_json(os.path.join(self.path, "bundle.json"))
        self.classes = self.manifest["classes"]
        self.n_items = self.manifest["n_items"]

    def __repr__(self):
        return f"<Bundle {self.manifest['name']}: {self.n_items} items, {len(self.classes)} classes>"

    def _array(self, name, field):
        p = os.path.join(self.path, name)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{os.path.join(self.path, 'bundle.json')}: field {field} names {name}, which does not exist")
        return np.load(p)

    def features(self, modality):
        """The feature matrix (float32, items × dim) of ``modality`` (index or name)."""
        m = modality_index(modality) if not isinstance(modality, int) else modality
        spec = self.manifest["modalities"][m]
        if not spec.get("features"):
            raise ValueError(f"{self.path}: modality {spec['name']} has no feature file")
        return self._array(spec["features"], f"modalities[{m}].features")

    def labels(self, modality=0):
        """Label rows (uint8, items × classes); per-modality label files when the bundle has them."""
        if self.manifest.get("labels"):
            return self._array(self.manifest["labels"], "labels")
        return self._array(self.manifest["modality_labels"][modality], f"modality_labels[{modality}]")

    def class_embeddings(self):
        spec = self.manifest.get("class_embeddings")
        return self._array(spec["file"], "class_embeddings.file") if spec else None

    def split(self, part):
        """Indices of the fixed split's ``train``, ``query`` or ``database`` (None without one)."""
        spec = self.manifest.get("split")
        return self._array(spec[part], f"split.{part}") if spec else None


def load_bundle(path):
    """Reads a bundle folder's manifest (arrays are loaded when asked for)."""
    if not os.path.isfile(os.path.join(os.fspath(path), "bundle.json")):
        raise FileNotFoundError(f"{path}: not a bundle (no bundle.json)")
    return Bundle(path)


def write_bundle(path, name, classes, features, labels, split=None, class_embeddings=None, source="", modality_names=("image", "text"),
                 class_embeddings_source=""):
    """Writes a bundle cmh can train on, into a temporary folder renamed to ``path`` when complete.

    ``features``: one float matrix (items × dim) per modality (image first, then text);
    ``labels``: 0/1 matrix (items × classes), every row labelled; ``split``: optional dict of
    ``train`` / ``query`` / ``database`` index arrays; ``class_embeddings``: optional float matrix
    (classes × E). ``path`` must not exist yet. Returns the :class:`Bundle`.
    """
    import shutil
    import tempfile

    path = os.fspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists")
    labels = np.asarray(labels)
    n = labels.shape[0]
    if labels.ndim != 2 or labels.shape[1] != len(classes):
        raise ValueError(f"labels must be items × classes ({len(classes)}), found shape {labels.shape}")
    if ((labels != 0) & (labels != 1)).any() or not labels.any(axis=1).all():
        raise ValueError("labels must be 0/1 with at least one label per row")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".bundle-", dir=parent)
    try:
        mods = []
        for m, x in enumerate(features):
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 2 or x.shape[0] != n:
                raise ValueError(f"features of modality {m} must be {n} × dim, found shape {x.shape}")
            f = f"{modality_names[m]}_features.npy"
            np.save(os.path.join(tmp, f), x)
            mods.append({"name": modality_names[m], "features": f, "dim": int(x.shape[1])})
        np.save(os.path.join(tmp, "labels.npy"), labels.astype(np.uint8))
        manifest = {"name": name, "source": source, "n_items": int(n), "classes": list(classes), "modalities": mods,
                    "labels": "labels.npy"}
        if class_embeddings is not None:
            e = np.asarray(class_embeddings, dtype=np.float32)
            if e.shape[0] != len(classes):
                raise ValueError(f"class embeddings must have one row per class ({len(classes)}), found {e.shape[0]}")
            np.save(os.path.join(tmp, "class_embeddings.npy"), e)
            manifest["class_embeddings"] = {"file": "class_embeddings.npy", "dim": int(e.shape[1]), "source": class_embeddings_source}
        if split is not None:
            manifest["split"] = {}
            for part in ("train", "query", "database"):
                idx = np.asarray(split[part], dtype=np.int64)
                if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
                    raise ValueError(f"split {part}: indices must be non-empty and within 0..{n - 1}")
                np.save(os.path.join(tmp, f"split_{part}.npy"), idx)
                manifest["split"][part] = f"split_{part}.npy"
        with open(os.path.join(tmp, "bundle.json"), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o755)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(path)
