"""Reporting finished runs: leaderboards (tables, plots, samples), publishing a run into results/, and repro."""
