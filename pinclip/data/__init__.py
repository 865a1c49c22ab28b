"""PinCLIP training data: text sources (``sources``), neighbor pairs from Pin–Board random walks
(``neighbors``), held-out evaluation pairs from the logs (``engaged``) and torch datasets (``dataset``)."""
