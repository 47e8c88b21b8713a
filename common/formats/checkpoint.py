"""The training checkpoint: a run's weights, optimiser state and history in one safetensors
file, so that `--resume` continues a run exactly where it stopped.

Arrays are stored as `model/<canonical name>` and `optimizer/<name>`; the metadata holds the
epochs done, the history (metrics.jsonl's rows), the run-defining flags and the framework, each
as a string (safetensors' metadata is str -> str). No framework is imported: the adapter hands
over NumPy arrays.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from common.core.files import atomic_path
from common.core.spec import ResNetSpec
from common.core.weights import (Weights, WeightsError, as_float32, check_entries,
                                 safetensors_entries)

METADATA = ("epoch", "history", "config", "framework")


class Checkpointed(Protocol):
    """What a checkpoint is written from: an adapter's weights and optimiser state."""
    framework: str

    def get_weights(self) -> Weights: ...

    def optimizer_state(self) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as read: `weights` (canonical), `optimizer` (the adapter's own names), and
    the metadata's strings (METADATA), each parsed when it is asked for."""
    weights: Weights
    optimizer: dict[str, np.ndarray]
    meta: dict[str, str]

    @property
    def framework(self) -> str:
        return self.meta["framework"]

    @property
    def epoch(self) -> int:
        """The epochs done."""
        return int(self.meta["epoch"])

    @property
    def history(self) -> list[dict]:
        """One row per epoch done, as in metrics.jsonl."""
        return json.loads(self.meta["history"])

    @property
    def config(self) -> dict:
        """The run-defining flags of the run that wrote it."""
        return json.loads(self.meta["config"])


def save_checkpoint(path: str | Path, adapter: Checkpointed, epoch: int, history: list[dict],
                    config: dict) -> None:
    """Weights, optimiser state and history in one safetensors file, written then renamed."""
    from safetensors.numpy import save_file
    arrays = {f"model/{k}": v for k, v in adapter.get_weights().items()}
    arrays |= {f"optimizer/{k}": v for k, v in adapter.optimizer_state().items()}
    meta = {"epoch": str(epoch), "history": json.dumps(history), "config": json.dumps(config),
            "framework": adapter.framework}
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp), metadata=meta)


def load_checkpoint(path: str | Path, spec: ResNetSpec | None = None) -> Checkpoint:
    """The checkpoint in `path`; a damaged or foreign file is a WeightsError that names it.
    With `spec`, the model's names, shapes and dtypes are checked from the file's header
    before any data is read (common.core.weights.check_entries)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata()
        entries = safetensors_entries(Path(path))
    except Exception as err:  # noqa: BLE001 - safetensors' own errors for a bad file
        raise WeightsError(f"checkpoint {path}: expected a safetensors file, could not read it "
                           f"({type(err).__name__}: {str(err)[:200]}); is it truncated?") from None
    if not meta or any(k not in meta for k in METADATA):
        raise WeightsError(f"checkpoint {path}: expected metadata {', '.join(METADATA)}, got "
                           f"{', '.join(sorted(meta or {})) or 'none'}; it is not a checkpoint "
                           f"of this project's train scripts")
    if spec is not None:
        model = {k[6:]: e for k, e in entries.items() if k.startswith("model/")}
        try:
            check_entries(spec, model)
        except WeightsError as err:
            raise WeightsError(f"checkpoint {path}: {err}") from None
    arrays = {k: as_float32(e.read()) for k, e in entries.items()}
    model = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    opt = {k[10:]: v for k, v in arrays.items() if k.startswith("optimizer/")}
    return Checkpoint(model, opt, meta)
