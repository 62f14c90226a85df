"""Import and export of weights in other libraries' layouts (diffusers, CompVis), one module per model."""
