"""Interop: Hugging Face export/import with exact logits, and an lm-evaluation-harness adapter.

- :func:`export_hf` / ``moelab export RUN_DIR --to hf --out DIR``
- :func:`import_hf` / ``moelab import HF_DIR --out RUN_DIR``
- ``moelab.interop.lm_eval_adapter.MoelabLM``: the harness's ``LM`` interface over any run
  (imported lazily: it needs ``lm_eval``).

See docs/interop.md.
"""

from moelab.interop.hf_classes import HFClass, class_for_hf_config, class_for_model, registry
from moelab.interop.hf_export import ExportResult, export_hf
from moelab.interop.hf_import import ImportResult, import_hf

__all__ = [
    "ExportResult",
    "HFClass",
    "ImportResult",
    "class_for_hf_config",
    "class_for_model",
    "export_hf",
    "import_hf",
    "registry",
]
