"""Search over spec variants: spaces (space.py) and trials (runner.py); docs/search.md."""
