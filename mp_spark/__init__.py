"""mp-spark: backfill events from a data lake into Mixpanel's /import API with Spark."""

__version__ = "0.1.0"
