"""The CPU reference engine for vision-language models, on the vLLM backend's tensor contract
(vllm_contract.py): request parsing, the generation loop and the Triton adapter's helpers."""
