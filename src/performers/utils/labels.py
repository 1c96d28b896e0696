"""The label convention shared by data, models and training."""

# Positions whose label is IGNORE_INDEX carry no loss and no metric: padding, unmasked tokens of
# masked language modelling, unresolved residues. -100 is PyTorch's (and Hugging Face's)
# default ``ignore_index`` of ``cross_entropy``.
IGNORE_INDEX = -100

__all__ = ["IGNORE_INDEX"]
