"""Drop-in modules that subclass their torch.nn counterparts and run fastformer ops."""
