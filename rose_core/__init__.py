"""ROSE Studio core library: OOD detection with deep generative models.

The library has no Streamlit dependency; the app in ``app.py``/``pages/`` is a
thin layer on top of it.
"""

__version__ = "0.1.0"
