"""clipdistill: distill a large CLIP teacher into a small CLIP student."""
from clipdistill.embeddings import Embeddings
from clipdistill.errors import ConfigError, UserError

__version__ = "0.1.0"
__all__ = ["Embeddings", "UserError", "ConfigError", "__version__"]
