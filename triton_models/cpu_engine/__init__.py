"""Pure logic of the CPU reference engine (no Triton imports)."""
