"""Application floor: the nightly chain, its planning decisions, DAG support and alerts."""
