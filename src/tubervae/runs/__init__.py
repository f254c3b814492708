"""The MLflow and Optuna edges: runs, their artifact layout, the registry, served models, studies and pruners."""
