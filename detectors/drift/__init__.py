"""Drift engines (numpy/scipy/alibi-detect): imported by the drift worker process only."""
