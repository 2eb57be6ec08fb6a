"""OOD scorers: ROSE and the baselines, one per module, sharing :class:`Scorer`."""

from rose_core.scorers.base import Scorer, ScoreResult  # noqa: F401
from rose_core.scorers.rose import RoseScorer  # noqa: F401
