"""Search strategies behind the optimizer facade: GFO and optuna engines, the GP model and the default."""
