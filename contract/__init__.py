"""Shared contract: constants, label maps, window geometry, tensor names and media decoding.

Everything here is torch-free (numpy, PyAV, OpenCV only) so the client and the serving code can
import it without pulling in PyTorch.
"""
