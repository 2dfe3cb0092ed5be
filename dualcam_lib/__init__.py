"""dualcam_lib: the dual-branch sigmoid head for faithful class activation maps (Oh & Noh, 2025)."""
__version__ = "0.1.0"
