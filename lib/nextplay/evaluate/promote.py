"""The promotion gate: which registered version `nextplay score` serves.

A nightly run trains a new model whatever the data did that day, so a model is served only once it
has been measured. After `evaluate` measures a training run, its registered version, the
challenger, gets the alias `challenger`; it gets the alias `champion` (what `score` loads by
default) only when the rule of `promote.*` passes: on the chosen metric it must beat session-kNN
and not fall behind the current champion. All three are measured on the same lines, the test split
of the sessions version the challenger's run pinned.

The champion may come from another sessionize generation, whose item index numbers the tracks
differently. Both models carry their own item index, so the challenger's lines are translated
through track ids into the champion's numbering (`translate_lines`, on the executors that rank the
champion), exactly as scoring maps a listener's history: tracks the champion never saw are
dropped from a prefix, and a label it never saw stays in the denominator as a miss. The line count is the challenger's either way, so the two figures divide
by the same number; a champion that does not know today's tracks is measured as worse, which it is.

The gate never removes a champion: a refused challenger leaves it where it was. Aliases are the
only registry state used (no stages), so the local sqlite registry and Unity Catalog behave alike.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import mlflow
import numpy as np
from pyspark.sql import DataFrame, SparkSession

from nextplay import run_metrics, tracking
from nextplay.config import AnnConfig, Config, PromoteConfig
from nextplay.evaluate.ranking import measure
from nextplay.metrics import rank_lines
from nextplay.model.pyfunc import NextTrackModel, collapse_repeats, load_trusted
from nextplay.shipping import load_cached, ship_model

log = logging.getLogger(__name__)

PROMOTION_TAG = "nextplay.promotion"  # "promoted: <reason>" or "refused: <reason>"
CHAMPION_TAG = "nextplay.champion_version"  # the champion the run was compared with, "" when none
CHAMPION_NAME = "champion"  # its rank column on the executors


@dataclass(frozen=True)
class Decision:
    """What the gate decided for one evaluated run, with the numbers it decided on."""

    promoted: bool
    reason: str  # one line with every figure compared
    metric: str
    challenger_version: str | None  # None: the run registered no version
    compared_champion: str | None  # the champion before the decision (None: there was none)
    champion_version: str | None  # the champion after the decision
    challenger: float
    session_knn: float
    champion: float | None  # the compared champion on the same lines, None when there was none
    champion_metrics: dict[str, float] | None  # every recall_at_K / mrr_at_K of that champion

    @property
    def tag(self) -> str:
        return f"{'promoted' if self.promoted else 'refused'}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"decision": "promoted" if self.promoted else "refused", **asdict(self)}


def decide(rule: PromoteConfig, challenger: float, session_knn: float, champion: float | None,
           champion_version: str | None = None, is_champion: bool = False) -> tuple[bool, str]:
    """The rule alone, on three numbers: (passes, a one-line reason naming each figure and bound).

    `is_champion`: the challenger already holds the alias (an evaluation run again); comparing it
    with itself says nothing, so only the baseline check applies."""
    m = rule.metric
    knn_gain = challenger - session_knn
    checks = [(knn_gain > rule.min_gain_over_knn, "session_knn",
               f"session_knn {session_knn:.4f} (gain {knn_gain:+.4f}, needs > {rule.min_gain_over_knn:+g})")]
    if is_champion:
        checks.append((True, "", f"it is the champion already (v{champion_version})"))
    elif champion is None:
        checks.append((True, "", "no champion yet"))
    else:
        gain = challenger - champion
        checks.append((gain >= rule.min_gain_over_champion, f"champion v{champion_version}",
                       f"champion v{champion_version} {champion:.4f} (gain {gain:+.4f}, needs >= "
                       f"{rule.min_gain_over_champion:+g})"))
    failed = [name for ok, name, _ in checks if not ok]
    figures = f"{m} {challenger:.4f} vs " + "; ".join(text for _, _, text in checks)
    if failed:
        return False, f"not good enough against {' and '.join(failed)}: {figures}"
    if not rule.enabled:
        return False, f"promotion disabled (promote.enabled=false), the rule passes: {figures}"
    return True, figures


def remap_to(champion: NextTrackModel, challenger: NextTrackModel) -> np.ndarray | None:
    """challenger item_idx -> champion item_idx (0: a track the champion does not know), or None when
    both number the tracks alike and the lines need no translation."""
    ours, theirs = challenger.track_ids, champion.track_ids
    if len(ours) == len(theirs) and ours.equals(theirs):
        return None
    remap = np.zeros(len(ours) + 1, dtype=np.int64)
    remap[1:] = theirs.get_indexer(ours) + 1  # get_indexer: -1 for unknown, so 0 after the shift
    return remap


def lines_for(champion: NextTrackModel, challenger: NextTrackModel, prefixes: Sequence[Sequence[int]],
              labels: Sequence[int]) -> tuple[list[list[int]], list[int]]:
    """The challenger's test lines in the champion's item numbering, through the track ids both models
    carry (see `translate_lines`)."""
    remap = remap_to(champion, challenger)
    if remap is None:
        return [list(p) for p in prefixes], list(labels)
    return translate_lines(remap, champion.collapse, prefixes, labels)


def translate_lines(remap: np.ndarray, collapse: bool, prefixes: Sequence[Sequence[int]],
                    labels: Sequence[int]) -> tuple[list[list[int]], list[int]]:
    """Lines through `remap` (challenger item_idx -> champion item_idx, 0: unknown). Unknown prefix
    tracks are dropped (then repeats collapsed if the champion was trained so, as scoring does); an
    unknown label, or a prefix with no known track ([0], label 0), is a miss that still counts as a line."""
    out_prefixes: list[list[int]] = []
    out_labels: list[int] = []
    for prefix, label in zip(prefixes, labels):
        seq = remap[np.asarray(prefix, dtype=np.int64)]
        seq = seq[seq > 0]
        if collapse:
            seq = collapse_repeats(seq)
        known = len(seq) > 0
        out_prefixes.append(seq.tolist() if known else [0])
        out_labels.append(int(remap[label]) if known else 0)
    return out_prefixes, out_labels


@dataclass(frozen=True)
class ChampionRanker:
    """The shipped champion's ranks of the challenger's lines, translated on the executor through
    `remap` (None: both number the tracks alike)."""

    shipped: str
    remap: np.ndarray | None
    batch_size: int
    candidates: str = "exact"  # exact, or auto: the champion's index where it has one (evaluate.candidates=ann)
    ann: AnnConfig = field(default_factory=AnnConfig)
    names: tuple[str, ...] = (CHAMPION_NAME,)

    def __call__(self, prefixes: Sequence[np.ndarray], labels: np.ndarray) -> Mapping[str, np.ndarray]:
        champion = load_cached(self.shipped)
        if self.remap is not None:
            prefixes, labels = translate_lines(self.remap, champion.collapse, prefixes, labels)
        ranking = champion.ranking(self.candidates, self.ann)
        return {self.names[0]: rank_lines(champion.rnn, prefixes, labels, self.batch_size, ranking=ranking)}


def measure_champion(cfg: Config, spark: SparkSession, uri: str, challenger: NextTrackModel,
                     lines: DataFrame) -> dict[str, float]:
    """recall_at_K / mrr_at_K (evaluate.ks) of the model at `uri` on the challenger's lines, ranked by
    the executors with the model shipped to them. The driver loads it too, with the trusted loader
    (no code from the registry runs), only for its track ids."""
    shipped, local = ship_model(spark, uri)
    remap = remap_to(load_trusted(local), challenger)
    # A champion logged without an index is measured exactly when the challenger is measured by ann.
    candidates = "auto" if cfg.evaluate.candidates == "ann" else "exact"
    measured = measure(lines, [ChampionRanker(shipped, remap, cfg.evaluate.batch_size, candidates, cfg.ann)],
                       cfg.evaluate.ks)
    return {k: v for k, v in measured[CHAMPION_NAME].items() if k != "lines"}


def gate(cfg: Config, spark: SparkSession, run_id: str, challenger: NextTrackModel, lines: DataFrame,
         model_metrics: Mapping[str, float],
         baselines: Mapping[str, Mapping[str, float]]) -> Decision:
    """Compare, decide, move the aliases, and log the decision to the run; see the module docstring."""
    tracking.configure(cfg.tracking)
    name, metric = cfg.tracking.model_name, cfg.promote.metric
    ours, knn = float(model_metrics[metric]), float(baselines["session_knn"][metric])
    version = tracking.version_of_run(name, run_id)
    before = tracking.alias_version(name, tracking.CHAMPION)
    if version is None:
        decision = Decision(False, f"the run registered no version of '{name}' (tracking.register=false?): nothing "
                            f"to promote; {metric} {ours:.4f} vs session_knn {knn:.4f}", metric, None, before, before,
                            ours, knn, None, None)
        _log(run_id, decision)
        return decision
    champion_metrics: dict[str, float] | None = None
    if before == version:
        champion_metrics = {k: float(v) for k, v in model_metrics.items() if k != "lines"}
    elif before is not None:
        champion_metrics = measure_champion(cfg, spark, f"models:/{name}/{before}", challenger, lines)
    theirs = None if champion_metrics is None else champion_metrics[metric]
    promoted, reason = decide(cfg.promote, ours, knn, theirs, before, is_champion=before == version)
    tracking.set_alias(name, tracking.CHALLENGER, version)
    if promoted:
        tracking.set_alias(name, tracking.CHAMPION, version)
    decision = Decision(promoted, reason, metric, version, before, version if promoted else before, ours, knn, theirs,
                        champion_metrics)
    _log(run_id, decision)
    tracking.annotate_version(name, version, *version_note(run_id, decision, model_metrics, baselines))
    log.info("promotion of %s v%s: %s", name, version, decision.tag)
    return decision


def version_note(run_id: str, decision: Decision, model_metrics: Mapping[str, float],
                 baselines: Mapping[str, Mapping[str, float]]) -> tuple[str, dict[str, str]]:
    """The registered version's description (the gate's decision and a table of the test figures
    beside the baselines') and tags (the decision and every test figure, `test/<who>/<metric>`)."""
    figures = {"model": model_metrics, **baselines}
    names = [k for k in model_metrics if k != "lines"]  # the baselines are measured on the same metrics
    rows = [f"| {who} | " + " | ".join(f"{f[k]:.4f}" if k in f else "" for k in names) + " |"
            for who, f in figures.items()]
    description = "\n".join([
        f"Gate on {decision.metric}: {decision.tag}", "",
        f"Test split, measured by evaluation run {run_id}:", "",
        "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names), *rows])
    tags = {"nextplay.gate": "promoted" if decision.promoted else "refused", "nextplay.evaluation_run": run_id,
            **{name: f"{v:.4f}" for who, f in figures.items() for name, v in run_metrics.tested(who, f).items()}}
    return description, tags


def _log(run_id: str, decision: Decision) -> None:
    """The champion's figures as `test/champion/*` metrics beside the run's own, and the decision as tags."""
    with mlflow.start_run(run_id=run_id):
        if decision.champion_metrics:
            mlflow.log_metrics(run_metrics.tested(run_metrics.CHAMPION, decision.champion_metrics))
        mlflow.set_tags({PROMOTION_TAG: decision.tag, CHAMPION_TAG: decision.compared_champion or ""})
