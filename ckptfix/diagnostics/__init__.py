"""Diagnostics: how stale stored statistics are (drift), what that does at the model's output (agreement),
and what a checkpoint's BN layers look like without any data (inspection)."""
