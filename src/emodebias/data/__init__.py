"""Data: corpus adapters, the manifest, labels, splits, class maps and audio I/O."""
