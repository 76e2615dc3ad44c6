"""WaferSAGE utilities: the package behind the numbered notebooks (data, features, cleaning, runs)."""

__version__ = "0.1.0"
