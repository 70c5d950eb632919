# Kiln Inf1 worker image: `kiln-worker --targets inf1` with AWS's archived Neuron toolchain.
#
# tensorflow-neuron (the `neuron` backend's tensorflow.neuron.trace) and its compiler neuron-cc
# are not on PyPI; they come from AWS's package repository and are archived upstream: the last
# tensorflow-neuron 2.x release is 2.10.1.2.12.2.0 (TensorFlow 2.10.1; release 2.12.2.0 of
# 09/16/2024, Python 3.9/3.10) and the last neuron-cc is 1.24.0.0 (the Inf1 entries of the Neuron
# SDK 2.28 manifest, aws-neuron/aws-neuron-sdk src/helperscripts/n2-manifest.json). Both are pinned
# here and exported as NEURON_TOOLCHAIN so the neuron backend can record them in each job's report.
#
# The image needs an Inf1 host with the Neuron driver (aws-neuronx-dkms) and /dev/neuron* passed in.
# Build from the repository root: docker build -f docker/worker-inf1.Dockerfile -t kiln/worker-inf1 .
FROM python:3.10-slim

ARG TENSORFLOW_NEURON_VERSION=2.10.1.2.12.2.0
ARG NEURON_CC_VERSION=1.24.0.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    KILN_TRACE_BACKEND=neuron \
    NEURON_TOOLCHAIN="tensorflow-neuron==${TENSORFLOW_NEURON_VERSION} neuron-cc==${NEURON_CC_VERSION}"

# The Neuron toolchain with the TensorFlow 2.10 it was built for (numpy 1.x: TF 2.10 predates numpy 2).
RUN pip install --extra-index-url https://pip.repos.neuron.amazonaws.com \
        "tensorflow-neuron[cc]==${TENSORFLOW_NEURON_VERSION}" \
        "neuron-cc==${NEURON_CC_VERSION}" \
        "numpy<1.24"

WORKDIR /src
COPY client client
COPY service service
COPY worker worker
# kiln-client and kiln-service with their (TensorFlow-free) dependencies; kiln-worker itself with
# --no-deps, so that its `tensorflow>=2.16` / `tf-keras` requirements do not replace TF 2.10: the
# neuron backend runs on tensorflow-neuron's TensorFlow, whose tf.keras is already Keras 2.
RUN pip install ./client "./service[redis,postgres,s3]" "numpy<1.24" \
    && pip install --no-deps ./worker \
    && python -c "import tensorflow as tf, tensorflow.neuron, kiln_worker.tasks; print('TF', tf.__version__)"

# bubblewrap isolates each compile (KILN_WORKER_SANDBOX); the worker refuses to start without it.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/kiln --create-home kiln \
    && mkdir -p /var/lib/kiln/work && chown kiln /var/lib/kiln/work
USER kiln
WORKDIR /var/lib/kiln
ENV KILN_DATA_DIR=/var/lib/kiln KILN_WORKER_WORK_DIR=/var/lib/kiln/work
CMD ["kiln-worker", "--targets", "inf1"]
