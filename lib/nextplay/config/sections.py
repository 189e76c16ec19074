"""The configuration's sections: every config key, its type, its default and what it means.

Each stage reads its own section (`Config.train`, `Config.score`, ...); nextplay/config/loading.py
builds a `Config` from the defaults, a YAML file and `--set` overrides, and validates it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad key or value in the configuration; the message is meant to be shown as is."""


@dataclass
class LakeConfig:
    # A folder or Hadoop URI holding one Delta table per sub-folder (laptop, cluster). When
    # `catalog` is set, tables live in Unity Catalog as `catalog.schema.<table>` instead.
    root: str = "lake"
    catalog: str | None = None
    schema: str | None = None
    # HTTP port of the HDFS NameNode (WebHDFS), for an hdfs:// root: Python code that reads or
    # writes lake-side files itself (training readers and rank 0 on the executors) goes through
    # it, since pyarrow's own HDFS client needs libhdfs and a JVM that pip installs do not ship.
    webhdfs_port: int | None = None


@dataclass
class SparkConfig:
    master: str | None = "local[*]"  # None: leave it to spark-submit / the cluster
    app_name: str = "nextplay"
    shuffle_partitions: int = 8  # local masters only; on a cluster set spark.sql.shuffle.partitions in `conf`
    driver_memory: str = "4g"
    # Folder with the Delta JARs fetched by `make jars`; when absent Spark resolves
    # `delta_package` from Maven at start-up.
    jars_dir: str | None = ".cache/jars"
    delta_package: str = "io.delta:delta-spark_4.0_2.13:4.4.0"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass
class GenerateConfig:
    output: str = "data/generated"
    format: Literal["json", "csv", "parquet"] = "json"
    events: int = 1_000_000
    users: int = 5_000
    tracks: int = 20_000
    artists: int = 1_500
    days: int = 14
    zipf_exponent: float = 1.1
    malformed_fraction: float = 0.001
    files: int = 8
    seed: int = 7
    # History ends at 00:00 UTC of this day: fixed so runs are reproducible, and in the past so
    # that ingest (which quarantines future rows) keeps every well-formed event.
    end_date: str = "2026-01-01"


@dataclass
class IngestConfig:
    input: str | None = None
    format: Literal[
        "auto", "json", "csv", "parquet", "lastfm", "lfm1b", "yoochoose", "diginetica"
    ] = "auto"
    # Default: a hash of the batch's new files (paths, sizes, modification times). A file is ingested once
    # whatever id or path spelling brings it back; reusing an id for other files is an error.
    batch_id: str | None = None
    # Rows stamped further than this in the future are quarantined (clock skew is allowed).
    max_future_minutes: int = 60
    earliest_ts: str = "2000-01-01T00:00:00Z"
    # Longer user/track/event ids are quarantined: they are corrupt fields, not identifiers.
    max_id_length: int = 256
    # Attempts per Delta commit when a concurrent ingest wins the race (optimistic concurrency).
    commit_attempts: int = 5


@dataclass
class SessionizeConfig:
    session_gap_minutes: int = 30
    # A track enters the item dictionary (and gets the next item_idx, for good) once it has this many
    # plays before the validation window.
    min_item_count: int = 5
    min_session_length: int = 2
    # Longer sessions are split into chunks of at most this many items (bounded rows, no skew).
    max_session_length: int = 200
    collapse_repeats: bool = True
    # The split by session start: fixed UTC dates (YYYY-MM-DD, 00:00 UTC; set both or neither): train
    # before valid_start, valid until test_start, test from then on. Unset: rolling from the newest
    # play, the last `test_days` are test and the `valid_days` before them valid (boundaries that move
    # with every day ingested, so each run also re-cuts the days they moved across).
    valid_start: str | None = None
    test_start: str | None = None
    valid_days: float = 1.0
    test_days: float = 1.0
    method: Literal["window", "session_window"] = "window"


@dataclass
class RecurrentConfig:
    """`model.recurrent.*`: settings of the recurrent encoders (model.encoder rnn, gru or lstm)."""

    num_layers: int = 1  # stacked recurrent layers


@dataclass
class SASRecConfig:
    """`model.sasrec.*`: settings of the causal self-attention encoder (model.encoder=sasrec, model/encoders.py)."""

    blocks: int = 2  # attention + feed-forward blocks
    heads: int = 1  # attention heads per block; must divide model.hidden_size
    # Learned position vectors, counted from a window's first item: the longest window the encoder
    # reads. Training windows (train.max_len) must fit; scoring reads each history's last this many items.
    max_positions: int = 50


@dataclass
class HybridConfig:
    """`model.hybrid.*`: how the trained network's distribution is mixed at scoring time (model/hybrid.py).

    Session-kNN over the `knn_sessions` most recent training sessions, stored in the model after
    training: the memory's items outside the prefix take `knn_explore_weight` of what the repeat gate
    sends to new items, then its whole distribution takes `knn_weight` of the answer. The search: the
    `knn_sample` most recent stored sessions sharing an item with the prefix, the `knn_neighbors` most
    similar of them; neighbour items count exp(-d / knn_position_decay) at d steps from where the
    sessions meet (0: all alike, plain V-SKNN). The network trains alone either way; both weights 0
    score the network alone. Chosen on the validation splits (docs/model-settings.md); the
    explore weight is 0.3 since equal-item batches made the RNN's own new-item ranking stronger.
    """

    # The head's logits are divided by this before its softmax (training never sees it). Below 1
    # sharpens the head against the memory: BPR-max trains scores to rank, not to be a likelihood,
    # and on diginetica's validation split they mixed best at 0.5.
    score_temperature: float = 1.0
    knn_weight: float = 0.1  # in [0, 1): the memory's whole vote
    knn_explore_weight: float = 0.3  # in [0, 1): the memory's share of the new-item mass (needs model.repeat)
    knn_position_decay: float = 1.0  # >= 0
    knn_neighbors: int = 100  # neighbours whose items vote, of the sampled candidates
    knn_sample: int = 2000  # most recent stored sessions sharing an item with the prefix: the candidates
    knn_sessions: int = 500_000  # sessions stored in the memory after training


@dataclass
class ModelConfig:
    # The network that turns a session's item vectors into a state per position (model/encoders.py):
    # a recurrent stack (`rnn`, `gru`, `lstm`; settings under model.recurrent) or causal
    # self-attention (`sasrec`, SASRec-style; settings under model.sasrec, trains with
    # train.batching=buckets only).
    encoder: Literal["rnn", "gru", "lstm", "sasrec"] = "gru"
    recurrent: RecurrentConfig = field(default_factory=RecurrentConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    head: Literal["full", "sampled", "bit_tree"] = "sampled"
    # Defaults tuned on validation splits cut from the benchmark sets' training sessions
    # (docs/model-settings.md): a wider state, and heavy dropout on the item vectors.
    hidden_size: int = 256
    embedding_size: int = 0  # 0: same as hidden_size
    dropout: float = 0.3  # on the encoder's states (and inside the attention blocks)
    embedding_dropout: float = 0.5  # on the item vectors the encoder reads
    tie_embeddings: bool = True  # the output item matrix is the input one (full and sampled heads)
    n_negatives: int = 2048  # sampled head: negatives drawn per batch
    sample_alpha: float = 0.3  # popularity ** alpha for the sampled head's negatives
    logq: bool = True  # sampled head: correct every logit by the log of its item's expected draws
    # What trains the head (model/losses.py): `cross_entropy` (the head's log-likelihood; for the
    # sampled head a sampled softmax with the log-q correction) or `bpr_max` (GRU4Rec's ranking loss:
    # the target against a softmax-weighted mix of the negatives, plus `bpr_reg` times their weighted
    # squared scores; sampled head only). Cross-entropy won on yoochoose1_64's validation split,
    # BPR-max (+2.4 MRR@20) on diginetica's: docs/model-settings.md.
    loss: Literal["cross_entropy", "bpr_max"] = "cross_entropy"
    bpr_reg: float = 0.9  # GRU4Rec's setting for diginetica, the one validated here
    init_std: float = 0.05  # standard deviation of the initial item vectors
    # What the output reads: the encoder's last state (GRU4Rec's readout) or that state plus attention
    # over the session's earlier states (NARM-style; bilinear scores, see model/readout.py). On both
    # benchmark sets' validation splits `last` was as accurate or better and 1.6x faster to train.
    readout: Literal["last", "attention"] = "last"
    # Mix the head's distribution with a learned pointer over items already in the session
    # (RepeatNet-style); a quarter of benchmark labels repeat an earlier item.
    repeat: bool = True
    # The repeat mixture's likelihood trains the gate and the pointer only, not the encoder's states
    # (they then learn from the head's loss alone). Measured with lanes in docs/model-settings.md.
    repeat_detached: bool = False
    hybrid: HybridConfig = field(default_factory=HybridConfig)


@dataclass
class DailyConfig:
    """`train.daily.*`: what `train.mode: daily` trains, the nightly increment of a model that is
    already serving. The champion already holds what older days taught it; the night adds the newest
    days, so the run costs the day, not the history."""

    window_days: int = 1  # the newest UTC days of the training split it trains on
    epochs: int = 1  # passes over them


@dataclass
class TrainConfig:
    launcher: Literal["local", "horovod", "spark", "torch_distributor"] = "local"
    num_proc: int = 1
    # `horovod` launcher only: where its processes run, as horovodrun's -H list ("host1:2,host2:2");
    # None: all num_proc on this machine. The other launchers take their hosts from Spark.
    hosts: str | None = None
    epochs: int = 5
    batch_size: int = 128
    # `buckets`: shuffled sessions in length-sorted batches of about batch_size x the mean session
    # length items each (train/loader.py `cut_points` says why). `lanes`: batch_size sessions in
    # flight, one target each per step, oldest sessions first (GRU4Rec's official session-parallel
    # batches; train/lanes.py says why, docs/model-settings.md measures it); recurrent encoders only.
    # Lanes run about 4x faster with bptt_steps=1, which they are meant for (model/cells.py `last_step`).
    batching: Literal["buckets", "lanes"] = "buckets"
    max_len: int = 50
    # Backpropagation through time, recurrent encoders: 0 through each whole session window; 1 cuts
    # the gradient between steps, every step fed the previous state as a constant (the official
    # GRU4Rec code). Values are unchanged, only gradients are cut; model/cells.py.
    bptt_steps: int = 0
    # `adam`: Adam on everything (row-wise where item gradients are sparse). `adagrad`: indexed
    # Adagrad with `momentum` on every parameter, as the official GRU4Rec code trains.
    optimizer: Literal["adam", "adagrad"] = "adam"
    lr: float = 0.005
    # Learning-rate multiplier over the run (per step when the epoch's step count is known).
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    momentum: float = 0.0  # optimizer=adagrad only (GRU4Rec's official code: 0 to 0.4)
    weight_decay: float = 0.0
    clip_norm: float = 5.0
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch intra-op threads per process; 0 = cores / processes
    # Petastorm reader processes per rank (train/shard_reader.py); None: 1 on a CPU, where training is
    # many times slower than one reader, and 4 on a GPU, which needs several times one reader's rate.
    reader_workers: int | None = None
    # Each run checkpoints into <checkpoint_dir>/<MLflow run id>/, removed once its model is logged.
    # Rank 0 also leaves the model there for the driver: with ranks on a cluster's executors it must be
    # storage every node reaches (hdfs://, s3://, a shared mount), never a folder on one machine.
    checkpoint_dir: str = "checkpoints"
    # Continue the newest unfinished training run that left checkpoints, in that MLflow run and on
    # the table versions it pinned; no such run: start a new one.
    resume: bool = False
    # Start from a registered model's weights instead of a fresh model: `champion` (the champion of
    # tracking.model_name) or a model URI (models:/name/3, runs:/id/model). Its item ids must name the
    # same tracks in this lake's item_index and its model settings (all but model.hybrid) must be
    # the configured ones; tracks added since get new rows, initialised as in a fresh model.
    # None: a fresh model. Not with `resume`, which continues a run from that run's own checkpoint.
    warm_start: str | None = None
    # Train on the sessions that started in the last `window_days` UTC days of the training split
    # (the days just before the validation window); None: every training session, all history.
    window_days: int | None = None
    # `full`: train as configured. `daily`: warm start from the champion and `daily.epochs` passes over
    # its `daily.window_days` (these replace warm_start, window_days and epochs); with no champion yet the
    # run trains as `full` and says so. The nightly job trains daily; a full retrain stays a command away.
    mode: Literal["full", "daily"] = "full"
    daily: DailyConfig = field(default_factory=DailyConfig)
    valid_fraction: float = 0.0  # benchmark only: hold out the last sessions to tune on
    progress: bool = True
    # Rank 0's mean loss and throughput every this many steps, logged into the MLflow run by step while
    # training runs (with each epoch's figures; train/report.py); 0: the epochs' figures only.
    report_every_steps: int = 50


@dataclass
class AnnConfig:
    """`ann.*`: the approximate nearest-neighbour index over the model's item vectors (model/ann.py).

    Built on the driver after training and logged with the model, so every scoring executor loads
    the index of exactly the weights it scores with. Scoring with it (`score.candidates`) ranks the
    `candidates` items it retrieves per listener plus the listener's own and the memory's neighbours'
    tracks, exactly (model/ranking.py); measured against the whole catalog in docs/scoring.md.
    """

    # `auto`: for catalogs of `min_items` tracks or more, and whenever score.candidates or
    # evaluate.candidates is `ann`; `always`; `never`. The bit-tree head has no item vectors: never built.
    build: Literal["auto", "always", "never"] = "auto"
    # Below this catalog size the exact scorer is cheap enough that an index is not worth its build.
    min_items: int = 100_000
    m: int = 16  # graph degree of the index: more is better recall, a larger and slower build
    ef_construction: int = 100  # breadth of the build's search
    # Items retrieved per listener, and the breadth of the query's search (at least `candidates`):
    # the search is the largest share of an ann listener's time, so both are as small as kept 98.8%
    # of the exact top 20 of a trained 1M-track model, with its memory and without (docs/scoring.md).
    candidates: int = 50
    ef_search: int = 100


@dataclass
class EvaluateConfig:
    ks: list[int] = field(default_factory=lambda: [10, 20])
    # Which items a test line's label is ranked among: `exact`, the whole catalog (the figures of
    # record), or `ann`, the retrieved candidates (a label outside them is a miss): what
    # score.candidates=ann serves, measured.
    candidates: Literal["exact", "ann"] = "exact"
    knn_neighbors: int = 500
    knn_sample: int = 1000
    batch_size: int = 1024
    # The most recent sessions of each split are kept, so a huge lake evaluates on a recent sample.
    # Test lines are ranked on the executors; of the train sample the driver holds int32 arrays it
    # ships to them for the baselines; the valid sample is training's validation, on the driver.
    max_test_sessions: int = 50_000
    max_train_sessions: int = 500_000
    max_valid_sessions: int = 20_000


@dataclass
class PromoteConfig:
    # After measuring a training run, `nextplay evaluate` gives its registered version the alias
    # `challenger`, and the alias `champion` (what `nextplay score` loads) only when the rule below
    # passes on the challenger's own test lines: the challenger, the current champion and session-kNN
    # are measured on the same lines (evaluate/promote.py).
    # false: evaluate measures and logs the comparison but never moves `champion`.
    enabled: bool = True
    # The metric the rule compares: recall_at_K or mrr_at_K, with K one of evaluate.ks.
    metric: str = "recall_at_20"
    # challenger - champion must be at least this, in the metric's units (0.01 = one point):
    # 0 promotes a challenger that is not worse; a small negative value tolerates a tiny loss. In [-1, 1].
    min_gain_over_champion: float = 0.0
    # challenger - session-kNN must be more than this: 0 promotes only a model that beats the baseline,
    # which also decides the very first champion. In [-1, 1].
    min_gain_over_knn: float = 0.0


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlruns.db"
    experiment: str = "nextplay"
    artifact_location: str = "mlartifacts"  # used for local stores only; see tracking.artifact_root
    registry_uri: str | None = None  # None: same as uri; Unity Catalog: databricks-uc
    model_name: str = "nextplay-rnn"  # Unity Catalog: catalog.schema.name
    register: bool = True
    # The source commit the running code was built from (the Databricks bundle passes the deployed
    # one): logged with the run's params and tagged as MLflow's `mlflow.source.git.commit`.
    git_commit: str | None = None
    # MLflow's system metrics (CPU, memory, disk, network, GPU) sampled on the driver through a training run.
    system_metrics: bool = True


@dataclass
class ScoreConfig:
    # Default: the version behind the alias `champion` of tracking.model_name, which `nextplay evaluate`
    # moves only to a model that passes the promotion gate (`promote`).
    model_uri: str | None = None
    top_k: int = 10
    lookback_days: int = 30
    history_length: int = 50
    exclude_played: bool = False
    batch_size: int = 512  # histories per forward pass in a scoring process
    chunk_size: int = 16384  # items scored at once by the streaming top-K; memory: docs/scoring.md
    # Which items each listener's top-K is chosen from (model/ranking.py): `exact`, the whole
    # catalog; `ann`, the candidates the model's index retrieves (`ann.*`) plus the listener's own
    # and the neighbours' tracks; `auto`, ann when the model was logged with an index (catalogs of
    # ann.min_items or more), exact otherwise.
    candidates: Literal["auto", "exact", "ann"] = "auto"
    score_date: str | None = None  # default: today (UTC)
    # A run that would write no rows (say, a model none of whose tracks were played recently) fails
    # instead of emptying the day's predictions partition; true replaces it with nothing anyway.
    allow_empty: bool = False


# Delta's own default for how long removed files are kept (delta.deletedFileRetentionDuration, 7 days),
# the floor its VACUUM safety check names: a shorter retention can delete files that a running write
# or a long query still reads.
DELTA_SAFE_RETENTION_HOURS = 168


@dataclass
class MaintenanceConfig:
    """`nextplay maintain`: compaction, clustering and removal of old files, for every table."""

    # Hours a file that no current table version uses (replaced by an overwrite, a MERGE, OPTIMIZE)
    # stays on storage before VACUUM deletes it, and hours the table's log keeps its commits: every
    # table version younger than this stays readable by time travel. Training runs pin the sessions
    # and item_index versions they read, and `evaluate --run-id` and `train --resume` read those
    # versions again, so this bounds how old a run can be and still be re-evaluated exactly. The
    # price is storage: sessionize rewrites sessions every night, so 30 days keep about 30 copies of
    # it. Also set on each table as delta.deletedFileRetentionDuration and delta.logRetentionDuration.
    retention_hours: int = 720
    # Below Delta's safety floor (168 hours) maintain refuses to run unless this is true: a short
    # retention can break a write or a query running during VACUUM, and older training runs can then
    # no longer be re-evaluated on the tables they read.
    allow_short_retention: bool = False
    # A predictions table an older release created partitioned by score_date cannot be clustered;
    # maintain Z-orders (by user_id) its score days within this many days of today. Older days were
    # Z-ordered while they were recent, and Z-ordering rewrites every file of the days it covers.
    zorder_days: int = 3


@dataclass
class Config:
    lake: LakeConfig = field(default_factory=LakeConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sessionize: SessionizeConfig = field(default_factory=SessionizeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    ann: AnnConfig = field(default_factory=AnnConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values, e.g. for MLflow params: nested sections are walked
        (`model.hybrid.knn_weight`); mapping values such as `spark.conf` stay one value."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            for f in dataclasses.fields(obj):
                key = f"{prefix}.{f.name}" if prefix else f.name
                value = getattr(obj, f.name)
                if dataclasses.is_dataclass(value):
                    walk(key, value)
                else:
                    out[key] = value

        walk("", self)
        return out


