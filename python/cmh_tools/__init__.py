"""cmh_tools: work with what cmh writes, in numpy.

- :mod:`~cmh_tools.codes`: code files in cmh's three forms, packing, Hamming distances, top-k;
- :mod:`~cmh_tools.metrics`: mAP, mAP@k, precision@N and precision–recall by radius, computed as
  ``cmh eval`` computes them;
- :mod:`~cmh_tools.models`: numpy encoders of saved SCH, CCA-ITQ, SeGH and SDCH models;
- :mod:`~cmh_tools.runs`: run folders, report.json, bundles;
- :mod:`~cmh_tools.stats`: bit balance, correlation and collisions;
- :mod:`~cmh_tools.plot`: precision–recall and precision@N charts (needs matplotlib).
"""

from .codes import as_packed, hamming_distances, load_codes, pack, save_codes, topk, unpack
from .metrics import evaluate, evaluate_distances, relevance
from .models import Model, load_model, rbf_features, read_safetensors
from .runs import Bundle, Run, find_runs, load_bundle, read_report, write_bundle
from .stats import code_statistics

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "Model",
    "Run",
    "as_packed",
    "code_statistics",
    "evaluate",
    "evaluate_distances",
    "find_runs",
    "hamming_distances",
    "load_bundle",
    "load_codes",
    "load_model",
    "pack",
    "rbf_features",
    "read_report",
    "read_safetensors",
    "relevance",
    "save_codes",
    "topk",
    "unpack",
    "write_bundle",
]
