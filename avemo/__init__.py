"""avemo: audio-video emotion recognition, from training to a live Triton demo."""

from pkgutil import extend_path

__version__ = "0.1.0"

# The checkout's avemo/ folder holds only the top-level modules: avemo.contract, avemo.training, ... are its
# sibling folders, which the installed copy (site-packages, or the editable install's link tree under build/)
# lays out below avemo/. `python -c` / `python -m` run in the checkout's root find that avemo/ folder first
# (the current directory leads sys.path); the installed avemo/ folders on sys.path are added to the package's
# search path here, so that its sub-packages are found all the same.
__path__ = extend_path(__path__, __name__)
