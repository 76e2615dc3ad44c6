"""`python -m wafersage_utils.serving`: the `wafersage-serve` command."""
from .cli import main

main()
