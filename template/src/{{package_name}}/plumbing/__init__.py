"""The machinery behind the commands: you need not read this to change the model, the loss,
the metrics or the data (those are model.py, data.py and config.py).

Here are the config files and overrides (settings), run folders and checkpoints (runs), the
data loader, learning-rate schedule and evaluation pass that both engines share (training),
what a run prints and plots (reporting), what produced it (record), sweeps, k folds, data
splits and the hardware. Errors a user can fix are `UserError`s: one line, exit code 2.
"""


class UserError(Exception):
    """A problem the user can fix (config, data, checkpoint); the message says how."""


class ConfigError(UserError):
    """An unknown key or a bad value in the configuration."""
