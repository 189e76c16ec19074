"""The layouts of `model.pt` this release reads, and how an older one becomes the current one.

A registered model outlives the code that trained it: rolling back to an earlier champion is the
point of the promotion gate, and that champion may have been saved by an earlier release. So every
saved file says which layout it has (`format`) and which release wrote it (`nextplay_version`),
and loading brings an older layout up to date step by step, before the config checks and the
weights see it:

- format 1: the model before its parts were composed (its network was `SessionRNN`): one flat
  config (`cell`, `num_layers`, the kNN and temperature keys beside the rest), the recurrent stack
  under `rnn.` and the session memory under `memory.`. Files of that time carry no `format` key.
- format 2: `SessionModel` (model/session.py): encoder, readout, head and hybrid scorer, with the
  config's `recurrent`, `sasrec` and `hybrid` sections.

A file of a newer format than `FORMAT` is refused in one line naming the release that wrote it:
only that release or a later one knows what its new fields mean.
"""
from __future__ import annotations

from typing import Any, Callable

FORMAT = 2

# Format 1 keys that moved into a section of the current ModelConfig.
_MOVED_1 = {"cell": ("encoder",), "num_layers": ("recurrent", "num_layers"), "score_temperature": ("hybrid", "score_temperature"),
            **{k: ("hybrid", k) for k in ("knn_weight", "knn_explore_weight", "knn_position_decay", "knn_neighbors",
                                          "knn_sample", "knn_sessions")}}
# Format 1 keys that are gone, with the one value the current model reproduces; another value
# changed what the model computes in a way this release no longer can.
_RETIRED_1 = {"cosine_scale": 0.0}
# Format 1 keys that only shaped training (which negatives a step drew): dropped whatever their value.
_TRAINING_ONLY_1 = ("exclude_session_items",)
# Format 1 files older than a key: the value that reproduces them (their memory had no explore
# step and used the baseline's neighbour search).
_BEFORE_THE_KEY_1 = {"knn_explore_weight": 0.0, "knn_position_decay": 0.0, "knn_neighbors": 500, "knn_sample": 1000}
# Format 1 state entries whose names moved.
_RENAMED_1 = {"rnn.": "encoder.stack.", "memory.": "hybrid.memory."}


class ModelFormatError(ValueError):
    """A saved model this release cannot read as it was meant."""


def file_format(payload: dict[str, Any]) -> int:
    """The layout of a loaded `model.pt` payload (files saved before formats were numbered are 1 or 2
    by their config's shape)."""
    if "format" in payload:
        return int(payload["format"])
    config = payload.get("config") or {}
    return 2 if "encoder" in config or "hybrid" in config else 1


def current(payload: dict[str, Any], where: str) -> dict[str, Any]:
    """`payload` (torch.load of a model.pt) in the current layout: config, state_dict and the rest.
    `where` names the file in errors."""
    found = file_format(payload)
    if found > FORMAT:
        writer = payload.get("nextplay_version", "a newer release")
        raise ModelFormatError(f"{where}: model format {found}, written by nextplay {writer}; this release reads formats "
                               f"up to {FORMAT}: load it with nextplay {writer} or later")
    for step in range(found, FORMAT):
        payload = _UPGRADES[step](payload, where)
    return payload


def _from_1(payload: dict[str, Any], where: str) -> dict[str, Any]:
    flat = {**_BEFORE_THE_KEY_1, **payload["config"]}
    config: dict[str, Any] = {}
    for key, value in flat.items():
        if key in _TRAINING_ONLY_1:
            continue
        if key in _RETIRED_1:
            if value != _RETIRED_1[key]:
                raise ModelFormatError(f"{where}: saved with model.{key}={value!r}, which releases of format 1 served "
                                       f"and this one does not (it reproduces only {key}={_RETIRED_1[key]!r})")
            continue
        path = _MOVED_1.get(key, (key,))
        section = config
        for part in path[:-1]:
            section = section.setdefault(part, {})
        section[path[-1]] = value
    state = {}
    for name, tensor in payload["state_dict"].items():
        for old, new in _RENAMED_1.items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        state[name] = tensor
    return {**payload, "config": config, "state_dict": state, "format": 2}


_UPGRADES: dict[int, Callable[[dict[str, Any], str], dict[str, Any]]] = {1: _from_1}
