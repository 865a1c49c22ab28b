"""A/B experiments: configuration, randomisation, simulation, metrics, statistics, reports."""
