"""The error of a diverged run, in a module of its own that imports nothing.

Ray unpickles it wherever a trial's failure travels (Tune's trial process, Train's controller,
the driver), and Tune's trial process checks for it: a light home keeps torch, timm and
torchvision out of those processes (seconds per trial on two cores).
"""

from __future__ import annotations


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial is stopped and marked failed."""
