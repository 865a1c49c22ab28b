"""PinCLIP model library: configs, towers, fusion and the ``create_model`` factory."""

from pinclip.models.config import (FusionConfig, ImageTowerConfig, PinCLIPConfig, TextTowerConfig, list_configs,
                                   load_config)
from pinclip.models.factory import PinCLIP, create_model
from pinclip.models.text import load_tokenizer, tokenize, train_tokenizer

__all__ = ["FusionConfig", "ImageTowerConfig", "PinCLIP", "PinCLIPConfig", "TextTowerConfig", "create_model",
           "list_configs", "load_config", "load_tokenizer", "tokenize", "train_tokenizer"]
