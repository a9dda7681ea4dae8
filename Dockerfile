# `ibllm serve` on a GPU host (NVIDIA driver + the NVIDIA container toolkit; CUDA comes with the torch wheel).
#
#   docker build -t ibllm-serve .
#   docker run --gpus all -p 8000:8000 -e IBLLM_API_KEY=change-me -v /data/weights:/weights:ro ibllm-serve \
#       --model /weights/7B.pth --llama-dir /weights/llama --imagebind /weights/imagebind_w3D.pth \
#       --visual-cache --knn-index /weights/knn.index
#
# Without arguments it serves the toy world. It listens on 0.0.0.0 inside the container, so it starts only with
# an API key (IBLLM_API_KEY); clients send it as "Authorization: Bearer <key>".
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from the CUDA index: with it installed, the package's torch range pulls nothing else
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/ibllm
COPY pyproject.toml README.md ./
COPY ibllm_agent ./ibllm_agent
COPY ui ./ui
RUN pip install ".[serve]" && useradd --create-home --uid 10001 ibllm
USER ibllm

EXPOSE 8000
# 503 until the model is loaded (the 7B takes a while): give it time before counting failures
HEALTHCHECK --start-period=600s --interval=30s --timeout=5s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
ENTRYPOINT ["ibllm", "serve", "--host", "0.0.0.0", "--port", "8000", "--device", "cuda"]
CMD ["--model", "toy"]
