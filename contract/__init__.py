"""Shared contract: label maps, window geometry, tensor names, the served model's name and default
ports (``endpoint``), media decoding and log-friendly progress bars.

Everything here is torch-free (numpy, PyAV, OpenCV, tqdm only) so the client and the serving code can
import it without pulling in PyTorch.
"""
