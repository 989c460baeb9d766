"""`autoglm bench`: a load generator for the gRPC API, side by side with direct Triton access.

Modules, one concern each: workload (what to send), loadgen (when to send it), direct / facade
(how, per path), procstat (CPU seconds from /proc), stats + targets + report (pure numbers and
verdicts), plots (PNG), stack (Triton + façade + OTLP sink on loopback), runner, cli.
"""
