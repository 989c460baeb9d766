"""triton_models."""
