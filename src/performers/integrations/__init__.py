"""Adapters to other ecosystems (optional extras, imported on demand):
``performers.integrations.transformers`` (``[hf]``), ``performers.integrations.sklearn``
(``[sklearn]``: random-feature RBF kernel approximations)."""
