"""radocc: rendering-assisted cross-modal distillation for 3D occupancy.

Importing the package is cheap and never touches the compiled extension;
``import radocc.render`` loads it (and explains how to build it if it is missing).
"""

__version__ = "0.1.0"
