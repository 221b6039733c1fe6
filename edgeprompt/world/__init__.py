"""The offline world: a procedural shapes dataset (``shapes``, torch-free) and a tiny CLIP pretrained on it (``tiny``).

Submodules are imported on use; importing this package pulls in nothing heavy.
"""
