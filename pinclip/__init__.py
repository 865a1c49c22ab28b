"""PinCLIP: the multimodal Pin embedding — model and losses (``pinclip.models``, ``pinclip.losses``),
publishing and candidate generation.

Kept import-free so that reading published embeddings does not load torch; use
``from pinclip.models import create_model``.
"""
