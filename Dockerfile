FROM python:3.11-slim
WORKDIR /opt/lenscat
COPY pyproject.toml README.md ./
COPY lenscat lenscat
COPY db db
COPY migrations migrations
COPY tasks tasks
# CPU torch by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 for CUDA
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} "torch>=2.4" && pip install --no-cache-dir .
ENTRYPOINT []
CMD ["lenscat", "--help"]
