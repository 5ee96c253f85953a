"""Built-in models and data sets, torchvision models by name, and user factories."""

from autocompress.zoo.data import DataBundle, build_data
from autocompress.zoo.models import build_model, create_model, list_models, register_model

__all__ = ["DataBundle", "build_data", "build_model", "create_model", "list_models", "register_model"]
