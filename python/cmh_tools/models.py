"""Encoding new items with a saved cmh model, in numpy.

``load_model(DIR)`` reads a model folder (``RUN/bitsB-seedS/model``, written by cmh) and returns an
encoder with the same ``encode(modality, features)`` as ``cmh encode``:

- SCH (eq. 26): ``b = sgn(φₜ(x) Wₜ R)``;
- CCA-ITQ: ``b = sgn(φₜ(x) projₜ)``, ``projₜ = Wₜ diag(corr^p) R`` stored multiplied out;
- SeGH: ``b = sgn(P Wₜ (zₜ − meanₜ))`` with zₜ = x, or zₜ = φₜ(x) when the model uses anchor
  features;
- SDCH in feature mode: standardise, the modality's MLP (ReLU between layers), the shared hash
  layer ``fc4``, sign.

φₜ are the RBF anchor features of the shallow methods: ``φ(x) = exp(−‖x − aⱼ‖² / (2σₜ²)) − φ̄``
over the anchors aⱼ (``m{t}_anchors.npy``), centred by the training mean φ̄ (``m{t}_phi_mean.npy``).
sgn(0) = +1. Modality 0 is the image side, 1 the text side.

cmh computes the shallow methods in float64 from float32 features and SDCH in float32, so a bit
may come out the other way where the projection is within rounding of 0; ``project(…,
with_scale=True)`` gives the size of such a tie (the sum of the absolute terms), and
``Model.tie_tolerance`` its relative size.
"""

import json
import os
import struct

import numpy as np

__all__ = ["load_model", "modality_index", "rbf_features", "read_safetensors", "Model"]

MODALITIES = ("image", "text")


def modality_index(modality):
    """0 for ``"image"`` / 0, 1 for ``"text"`` / 1."""
    if isinstance(modality, str):
        if modality not in MODALITIES:
            raise ValueError(f"modality must be image or text, found {modality!r}")
        return MODALITIES.index(modality)
    if modality not in (0, 1):
        raise ValueError(f"modality must be 0 (image) or 1 (text), found {modality!r}")
    return int(modality)


def _features(x):
    """Features as cmh reads them: float32, computed in float64."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-d array (items × dim), found shape {x.shape}")
    x = x.astype(np.float32).astype(np.float64)
    if not np.isfinite(x).all():
        i, j = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"feature value {x[i, j]} at row {i}, column {j} is not finite")
    return x


def sq_distances(x, anchors):
    """Squared Euclidean distances (n × anchors), clipped at 0 against rounding."""
    x = np.asarray(x, dtype=np.float64)
    anchors = np.asarray(anchors, dtype=np.float64)
    if x.shape[1] != anchors.shape[1]:
        raise ValueError(f"features have {x.shape[1]} columns but the model was trained on {anchors.shape[1]}")
    return np.maximum((x * x).sum(1)[:, None] + (anchors * anchors).sum(1)[None, :] - 2.0 * x @ anchors.T, 0.0)


def rbf_features(x, anchors, sigma, phi_mean):
    """Centred RBF anchor features φ(x) − φ̄ (n × anchors)."""
    return np.exp(-sq_distances(x, anchors) / (2.0 * sigma * sigma)) - phi_mean


_SAFETENSORS_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1", "I8": "i1"}


def read_safetensors(path):
    """The tensors of a ``.safetensors`` file as numpy arrays (u64 header length, JSON header,
    raw little-endian data)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, which is not supported here")
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], dtype=_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


class Model:
    """A saved model folder. Subclasses implement ``_project``."""

    #: Relative size of a rounding-level tie (float64 methods; SDCH computes in float32).
    tie_tolerance = 1e-9

    def __init__(self, directory, meta):
        self.dir = os.fspath(directory)
        self.meta = meta
        self.method = meta["method"]
        self.bits = int(meta["bits"])

    def _load(self, name):
        path = os.path.join(self.dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing from the {self.method} model folder")
        return np.load(path)

    def project(self, modality, features, with_scale=False):
        """The real-valued projection h (items × bits) whose sign is the code; with
        ``with_scale``, also the sum of the absolute terms of each entry."""
        h, scale = self._project(modality_index(modality), _features(features))
        return (h, scale) if with_scale else h

    def encode(self, modality, features):
        """int8 ±1 codes (items × bits) of new items, as ``cmh encode``."""
        return np.where(self.project(modality, features) >= 0, 1, -1).astype(np.int8)

    def train_codes(self):
        """The learned unified codes B of the training items (int8 ±1), when the model has them."""
        for stem in ("B", "train_codes"):
            path = os.path.join(self.dir, f"{stem}.npy")
            if os.path.isfile(path):
                from .codes import load_codes
                return load_codes(path, self.bits)
        return None

    def __repr__(self):
        return f"<{self.method} model, {self.bits} bits, {self.dir}>"


class _RbfModel(Model):
    def _rbf(self, t, x):
        return rbf_features(x, self._load(f"m{t}_anchors.npy"), self.meta["sigma"][t], self._load(f"m{t}_phi_mean.npy"))


class SchModel(_RbfModel):
    """SCH: b = sgn(φₜ(x) Wₜ R) (eq. 26)."""

    def _project(self, t, x):
        phi = self._rbf(t, x)
        proj = self._load(f"m{t}_W.npy") @ self._load("R.npy")
        return phi @ proj, np.abs(phi) @ np.abs(proj)


class CcaItqModel(_RbfModel):
    """CCA-ITQ: b = sgn(φₜ(x) projₜ)."""

    def _project(self, t, x):
        phi = self._rbf(t, x)
        proj = self._load(f"m{t}_proj.npy")
        return phi @ proj, np.abs(phi) @ np.abs(proj)


class SeghModel(_RbfModel):
    """SeGH: b = sgn(P Wₜ (zₜ − meanₜ)), zₜ = x or the anchor features φₜ(x)."""

    def _project(self, t, x):
        z = self._rbf(t, x) if self.meta.get("sigma") else x
        zc = z - self._load(f"mean_{t}.npy")
        proj = self._load("P.npy") @ self._load(f"W_{t}.npy")
        return zc @ proj.T, np.abs(zc) @ np.abs(proj.T)


class SdchModel(Model):
    """SDCH in feature mode: the modality's MLP, then the shared hash layer fc4."""

    tie_tolerance = 1e-4

    def __init__(self, directory, meta):
        super().__init__(directory, meta)
        self._weights = None

    def weights(self):
        """The network's tensors by name (float64)."""
        if self._weights is None:
            raw = read_safetensors(os.path.join(self.dir, "weights.safetensors"))
            self._weights = {k: v.astype(np.float64) for k, v in raw.items()}
        return self._weights

    def hidden(self, t, x):
        """The input of the hash layer fc4 for modality t."""
        if t == 0 and self.meta["arch"]["image"]["kind"] != "features":
            raise ValueError(f"{self.dir}: the image network is AlexNet on raw images; encode images with `cmh encode`")
        w = self.weights()
        side = ("img", "txt")[t]
        h = (x - w[f"{side}-input.mean"]) / w[f"{side}-input.std"]
        i = 1
        while f"{side}-fc{i}.weight" in w:
            h = h @ w[f"{side}-fc{i}.weight"].T + w[f"{side}-fc{i}.bias"]
            i += 1
            if f"{side}-fc{i}.weight" in w:
                h = np.maximum(h, 0)
        return h

    def _project(self, t, x):
        w = self.weights()
        h = self.hidden(t, x)
        return h @ w["fc4.weight"].T + w["fc4.bias"], np.abs(h) @ np.abs(w["fc4.weight"].T) + np.abs(w["fc4.bias"])


_MODELS = {"sch": SchModel, "cca-itq": CcaItqModel, "segh": SeghModel, "sdch": SdchModel}


def load_model(directory):
    """The numpy encoder of a saved model folder (SCH, CCA-ITQ, SeGH, SDCH in feature mode).

    Other methods (CZHash, AgNet, random) have no numpy encoder: use ``cmh encode``.
    """
    path = os.path.join(os.fspath(directory), "model.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no model here (a model folder is RUN/bitsB-seedS/model)") from None
    except ValueError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    method = meta.get("method")
    if method not in _MODELS:
        raise ValueError(f"{path}: method {method!r} has no numpy encoder (those are {', '.join(_MODELS)}); "
                         f"use `cmh encode --model {directory}`")
    return _MODELS[method](directory, meta)
