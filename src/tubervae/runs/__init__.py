"""Everything that touches MLflow: runs, their artifact layout, the registry and served models."""
