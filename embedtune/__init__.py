"""embedtune: fine-tune retrieval embedding models for one domain."""

__version__ = "0.1.0"
