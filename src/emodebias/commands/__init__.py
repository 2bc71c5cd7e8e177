"""CLI command modules; each imports `app` from emodebias.cli and registers its commands."""
