"""modelhost: serve a trained image model as a fast, safe, observable web API.

Nothing runs on import; the server is built by :func:`modelhost.assembly.build_app`.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
