"""emodebias: measure and reduce demographic bias in multi-label speech emotion recognition."""

__version__ = "0.1.0"
