"""Facts the domain (models_app) and the training engine share, with neither Django nor torch.

Both sides import from here and never from each other for these facts: the training parameters
(names, types, bounds, defaults, what they mean), the image transforms, and the model families.
"""
