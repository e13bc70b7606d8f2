FROM python:3.11-slim
WORKDIR /opt/lenscat
COPY pyproject.toml README.md ./
COPY lenscat lenscat
COPY db db
COPY migrations migrations
COPY tasks tasks
RUN pip install --no-cache-dir .
ENTRYPOINT []
CMD ["lenscat", "--help"]
