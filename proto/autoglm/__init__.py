"""Open-AutoGLM: a TensorRT-LLM compiled engine service over gRPC.

Subpackages: ``autoglm.v1`` (generated API stubs), ``autoglm.server`` (the gRPC façade),
``autoglm.client`` (Python client and CLI), ``autoglm.build_engine`` (engine builds per GPU SKU),
``autoglm.triton_models`` (the Triton model repository and the CPU reference engine).
"""

__version__ = "0.1.0"
