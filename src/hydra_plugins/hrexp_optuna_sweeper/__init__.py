"""hrexp's Hydra plugins (Hydra finds plugins only in the hydra_plugins namespace): the Optuna sweeper that keeps a study going past failed trials."""
