"""`avemo search`: loss-weight search on an Optuna study (space, study, worker, report, launcher, cli)."""
