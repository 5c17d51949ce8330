"""slimformer: make fine-tuned transformer encoders smaller and faster, within a budget.

Importing this package is light: no torch model, dataset or CUDA initialisation happens here.
"""

__version__ = "0.1.0"
