"""volseg: few-label 3D segmentation of COVID-19 lung lesions in chest CT."""

__version__ = "0.1.0"
