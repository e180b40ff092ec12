"""What runs in a trial's own processes: the Tune trainable and its Ray Train workers or the
in-process runner, resume and replay, fault drills and the trial's outcome file."""
