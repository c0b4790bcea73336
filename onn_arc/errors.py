"""One exception hierarchy for every failure a user can cause.

The CLI turns any `OnnArcError` into one line on stderr and exit code 1; the
message must name the thing that is wrong (file, field, value) by itself.
"""


class OnnArcError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    kind = "error"


class TaskError(OnnArcError):
    """A task file or task JSON is unreadable or invalid."""

    kind = "bad task"


class TaskNotFound(OnnArcError):
    """A task id, split index or path that does not exist."""

    kind = "not found"


class GridError(OnnArcError):
    """A token stream or array that is not a valid ARC grid."""

    kind = "bad grid"


class CheckpointError(OnnArcError):
    """A checkpoint that is missing, corrupt, tampered with or incompatible."""

    kind = "bad checkpoint"


class ConfigError(OnnArcError):
    """An invalid configuration value or config file."""

    kind = "bad config"


class SubmissionError(OnnArcError):
    """A Kaggle-style submission file that does not have the expected shape."""

    kind = "bad submission"


class LeakageError(OnnArcError):
    """Scoring a split whose test outputs the checkpoint was trained on."""

    kind = "leakage"


class TrainingError(OnnArcError):
    """Training cannot continue (e.g. repeated non-finite losses)."""

    kind = "training failed"
