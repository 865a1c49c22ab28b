"""pinlift: PinCLIP embeddings, a TorchRec ranker and A/B tests on a simulated (or your own) Pinterest.

``pinlift.core`` holds what every stage shares; ``pinlift.readouts`` reads a whole workspace back."""
