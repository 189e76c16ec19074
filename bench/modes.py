"""How big each benchmark is: `full` (make bench), `quick` (make bench-quick, < 10 min on 2 cores)
and `tiny` (the smoke test: checks the harness, not speed).

Sizes are chosen so the slowest single run stays short enough to repeat on a 2-core machine, and so
that the training and scoring figures are measured at the same catalog sizes in
every mode (10k, 100k and 1M items): only steps, users and repetitions shrink in quick mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field

VOCABS = (10_000, 100_000, 1_000_000)  # catalog sizes of the training-head sweep
HEADS = ("full", "sampled", "bit_tree")


@dataclass(frozen=True)
class Mode:
    name: str
    # Sessionize sweep: events in the largest input; the others are 1/4 and 1/16 of it, taken as
    # subsets of its listeners (growth by audience, each listener's history unchanged).
    largest_events: int
    ratio_events: int  # sessionize_over_sort is measured at this size (one of the sweep's sizes)
    repeats: int  # repetitions of every run short enough to repeat; the median is reported
    events_per_user: int = 200  # as in conf/local.yml: 1M plays over 5,000 listeners
    tracks: int = 20_000
    # Training: steps per head and catalog size (the sweep), per Horovod run, on yoochoose1_64.
    train_batches: int = 100  # batches `fit` is timed over in loader_over_train (the loader: one epoch)
    head_steps: dict[int, int] = field(default_factory=lambda: {10_000: 20, 100_000: 10, 1_000_000: 4})
    head_batch: int = 32  # sessions per step of the head sweep; 32 x 10 items keeps V = 1M in memory
    head_length: int = 10
    step_steps: int = 20  # sampled-head steps per timed run of step_1m_over_10k (repeated, interleaved)
    hidden_size: int | None = None  # None: the configured default
    horovod_steps: int = 120  # total steps at np=1; np=2 runs half as many per process
    yoochoose_steps: int = 200
    # Scoring: users scored per catalog size.
    score_users: dict[int, int] = field(default_factory=lambda: {10_000: 20_000, 1_000_000: 2_000})
    memory_sessions: int = 500_000  # sessions in the hybrid's memory (model.hybrid.knn_sessions' default)
    memory_vocabs: tuple[int, ...] = (1_000_000,)  # catalog sizes of score_memory_over_model
    # The daily cycle (bench/daily.py): plays per day in lakes of 7 and 28 days.
    daily_plays: int = 1_000_000

    def __post_init__(self) -> None:
        if self.ratio_events not in self.event_sizes:
            raise ValueError(f"mode {self.name}: ratio_events must be one of {self.event_sizes}")

    @property
    def event_sizes(self) -> tuple[int, int, int]:
        return (self.largest_events // 16, self.largest_events // 4, self.largest_events)


FULL = Mode("full", largest_events=16_000_000, ratio_events=1_000_000, repeats=3,
            memory_vocabs=(1_000_000, 10_000_000))
QUICK = Mode("quick", largest_events=400_000, ratio_events=100_000, repeats=3, train_batches=20,
             head_steps={10_000: 4, 100_000: 2, 1_000_000: 1}, step_steps=10, horovod_steps=20, yoochoose_steps=20,
             score_users={10_000: 2_000, 1_000_000: 100}, memory_sessions=100_000, daily_plays=50_000)
TINY = Mode("tiny", largest_events=16_000, ratio_events=4_000, repeats=1, tracks=2_000, train_batches=4,
            head_steps={10_000: 1, 100_000: 1, 1_000_000: 1}, step_steps=1, head_batch=4, head_length=5, hidden_size=8,
            horovod_steps=4, yoochoose_steps=2, score_users={10_000: 100, 1_000_000: 20}, memory_sessions=1_000,
            daily_plays=1_000)

MODES = {m.name: m for m in (FULL, QUICK, TINY)}
