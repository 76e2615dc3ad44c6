"""WaferSAGE utilities: the package behind the numbered notebooks.

Sub-packages by task: `maps` (stage 01), `corpus` (02 to 04), `training` (05, 06), `evaluation` (05 to 07),
`chat` (model backends), `serving` (the endpoint), `runner` (params, run folders, the pipeline); `plots` draws
the figures every notebook shares.
"""

__version__ = "0.1.0"
