"""Layer 4: the ``twistd`` tap modules, one per role."""
