"""The Ray Serve app that serves the published lookup table (see serve/app.py)."""
