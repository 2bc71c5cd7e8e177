"""Features: frozen encoders and the feature store they fill."""
