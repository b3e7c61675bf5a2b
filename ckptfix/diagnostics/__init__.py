"""Diagnostics, pure metrics on statistics and outputs: how stale stored statistics are (drift) and what that
does at the model's output (agreement)."""
