FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY driftline ./driftline
COPY streams ./streams
COPY models ./models
COPY api ./api
RUN pip install . && useradd --create-home --uid 10001 driftline
USER driftline
ENTRYPOINT ["driftline"]
CMD ["--help"]
