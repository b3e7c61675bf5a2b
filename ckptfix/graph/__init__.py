"""Where models are loaded, BN layers found, feeds detected and the forward pass run."""
